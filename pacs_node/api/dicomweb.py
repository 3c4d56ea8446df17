"""DICOMweb routes (PS3.18): STOW-RS in, QIDO-RS search and WADO-RS retrieve.

STOW-RS instances go through the same :class:`~pacs_node.ingest.Receiver` as C-STORE; the
end of a STOW-RS request declares each series it carried complete. QIDO-RS and WADO-RS
serve what the node holds: received series and the derived series it made.
"""

from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pacs_node.admin import Principal
from pacs_node.api.auth import DicomwebAccess
from pacs_node.api.multipart import MultipartError, build_related, parse_content_type, split_related
from pacs_node.db.archive import ArchiveIndex, SeriesRow, StoredInstance, StudyFilter
from pacs_node.db.repository import JobRepository
from pacs_node.dicom.codecs import DecodeError, pixel_array
from pacs_node.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    IngestResult,
    Origin,
    Receiver,
    decoding_problem,
)

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# Matching keys per QIDO-RS level (the attributes the node indexes; PS3.18 Table 10.6.1-5).
STUDY_KEYS = {
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "AccessionNumber",
    "ModalitiesInStudy",
}
SERIES_KEYS = STUDY_KEYS | {"SeriesInstanceUID", "Modality"}
INSTANCE_KEYS = SERIES_KEYS | {"SOPInstanceUID", "SOPClassUID"}
CONTROL_KEYS = {"limit", "offset", "includefield", "fuzzymatching"}
# Shown to viewers without patient data as HIDDEN, and not searchable by them.
PATIENT_KEYS = {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"}
HIDDEN = "(hidden)"
# WADO-RS default transfer syntax (PS3.18 8.7.3.5.2).
EXPLICIT_VR_LE = str(ExplicitVRLittleEndian)


@dataclass
class _SeriesEntry:
    study: str
    series: str
    modality: str | None
    number: int | None
    description: str | None
    study_row: SeriesRow | None
    instances: list[StoredInstance] = field(default_factory=list)


def _wildcard(value: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    )


def _matches(value: str | None, pattern: str | None) -> bool:
    if not pattern:
        return True
    return value is not None and _wildcard(pattern).fullmatch(value) is not None


def _bulk_uri(url: str) -> Callable[[DataElement], str]:
    def handler(_element: DataElement) -> str:
        return url

    return handler


def _header(path: str) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


class _Query:
    """The matching keys and paging of one QIDO-RS request, validated for its level."""

    def __init__(self, request: Request, allowed: set[str]) -> None:
        self.keys: dict[str, str] = {}
        self.limit: int | None = None
        self.offset = 0
        for name, value in request.query_params.multi_items():
            if name in CONTROL_KEYS:
                if name in ("limit", "offset"):
                    if not value.isdigit():
                        raise HTTPException(400, f"{name} must be a non-negative integer")
                    setattr(self, name, int(value))
                continue
            keyword = name
            if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
                keyword = keyword_for_tag(int(name, 16)) or name
            if keyword not in allowed:
                raise HTTPException(
                    400,
                    f"matching on {name!r} is not supported here; supported: "
                    f"{', '.join(sorted(allowed))}",
                )
            self.keys[keyword] = value

    def page(self, items: list[Any]) -> list[Any]:
        end = None if self.limit is None else self.offset + self.limit
        return items[self.offset : end]

    @property
    def study_filter(self) -> StudyFilter:
        return StudyFilter(
            study_instance_uid=self.keys.get("StudyInstanceUID"),
            patient_id=self.keys.get("PatientID"),
            patient_name=self.keys.get("PatientName"),
            study_date=self.keys.get("StudyDate"),
            accession_number=self.keys.get("AccessionNumber"),
        )


# A STOW-RS request is stored in batches of at most this many instances or bytes.
STOW_BATCH_INSTANCES = 256
STOW_BATCH_BYTES = 64 * 2**20


def _json(items: list[Dataset]) -> Response:
    return JSONResponse([ds.to_json_dict() for ds in items], media_type=DICOM_JSON)


def create_dicomweb_router(
    repository: JobRepository,
    archive: ArchiveIndex,
    receiver: Receiver | None,
    access: DicomwebAccess,
) -> APIRouter:
    """The ``/dicom-web`` routes; STOW-RS answers 503 when ``receiver`` is None."""
    router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])

    # -- STOW-RS -------------------------------------------------------------------

    def _store_parts(
        parts: list[tuple[dict[str, str], bytes]], study: str | None, origin: Origin
    ) -> tuple[list[Dataset], list[Dataset], set[str], set[str]]:
        assert receiver is not None
        stored: list[Dataset] = []
        failed: list[Dataset] = []
        series_done: set[str] = set()
        studies: set[str] = set()

        def fail(ds: Dataset | None, reason: int, comment: str, counted: bool = False) -> None:
            item = Dataset()
            item.ReferencedSOPClassUID = str(ds.get("SOPClassUID", "")) if ds else ""
            item.ReferencedSOPInstanceUID = str(ds.get("SOPInstanceUID", "")) if ds else ""
            item.FailureReason = reason
            # Error Comment (0000,0902) as the reason in words, as DIMSE statuses carry it.
            item.add(DataElement(0x00000902, "LO", comment[:64]))
            failed.append(item)
            if not counted:
                receiver.count("STOW-RS", IngestResult(reason, comment))
            logger.warning("STOW-RS from %s: instance refused: %s", origin.source, comment)

        batch: list[tuple[Dataset, bytes, str]] = []
        batch_bytes = 0

        def store_batch() -> None:
            """Store the parts gathered so far together (one flush of the disk, one
            transaction per series); the answer goes out only after every instance it
            names is durable. Batches are bounded, so a large request neither holds every
            decoded dataset at once nor flushes gigabytes in one go."""
            nonlocal batch, batch_bytes
            if not batch:
                return
            results = receiver.accept_many(batch, origin, decoded=True)  # checked as read
            for (sent, _, _), result in zip(batch, results, strict=True):
                if not result.ok:
                    fail(sent, result.status, result.message or "", counted=True)
                    continue
                item = Dataset()
                item.ReferencedSOPClassUID = str(sent.SOPClassUID)
                item.ReferencedSOPInstanceUID = str(sent.SOPInstanceUID)
                stored.append(item)
                series_done.add(str(sent.SeriesInstanceUID))
                studies.add(str(sent.StudyInstanceUID))
                item.RetrieveURL = (
                    f"/dicom-web/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}"
                    f"/instances/{sent.SOPInstanceUID}"
                )
            batch, batch_bytes = [], 0

        for headers, payload in parts:
            part_type = parse_content_type(headers.get("content-type", DICOM)).media_type
            if part_type != DICOM:
                fail(None, CANNOT_UNDERSTAND, f"part of type {part_type}, {DICOM} expected")
                continue
            try:
                ds = pydicom.dcmread(io.BytesIO(payload))
                transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
            except Exception as exc:  # noqa: BLE001 - edge: any parsing failure is a refusal
                fail(None, CANNOT_UNDERSTAND, f"not a DICOM file: {exc}"[:200])
                continue
            problem = decoding_problem(ds)
            if problem is not None:
                fail(None, CANNOT_UNDERSTAND, problem)
                continue
            if study is not None and str(ds.get("StudyInstanceUID", "")) != study:
                # PS3.18 10.5: instances of another study than the target are refused.
                fail(ds, DATASET_DOES_NOT_MATCH_SOP_CLASS, "StudyInstanceUID differs from URL")
                continue
            batch.append((ds, payload, transfer_syntax))
            batch_bytes += len(payload)
            if len(batch) >= STOW_BATCH_INSTANCES or batch_bytes >= STOW_BATCH_BYTES:
                store_batch()
        store_batch()
        if series_done:
            repository.request_completion(series_done, origin.source)
        return stored, failed, series_done, studies

    async def stow(request: Request, study: str | None) -> Response:
        if receiver is None:
            raise HTTPException(503, "this node does not accept STOW-RS")
        full = receiver.disk_refusal()
        if full is not None:  # refused before the body is read: nothing is half-stored
            receiver.count("STOW-RS", IngestResult(OUT_OF_RESOURCES, full))
            raise HTTPException(507, full)
        content_type = parse_content_type(request.headers.get("content-type", ""))
        if content_type.media_type != "multipart/related":
            raise HTTPException(415, f'expected multipart/related; type="{DICOM}"')
        part_type = content_type.params.get("type", DICOM).lower()
        if part_type != DICOM:
            raise HTTPException(415, f"only {DICOM} parts are accepted, not {part_type}")
        body = await request.body()
        try:
            parts = split_related(body, content_type.params.get("boundary", ""))
        except MultipartError as exc:
            raise HTTPException(400, str(exc)) from exc
        if not parts:
            raise HTTPException(400, "the request carries no instance")
        client = request.client.host if request.client else "?"
        origin = Origin(None, None, f"STOW-RS {client}", "STOW-RS")
        stored, failed, _, studies = await run_in_threadpool(_store_parts, parts, study, origin)
        base = str(request.base_url).rstrip("/")
        response = Dataset()
        if study is not None or len(studies) == 1:
            response.RetrieveURL = f"{base}/dicom-web/studies/{study or next(iter(studies))}"
        for item in stored:
            item.RetrieveURL = base + item.RetrieveURL
        if stored:
            response.ReferencedSOPSequence = stored
        if failed:
            response.FailedSOPSequence = failed
        # PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.
        status = 200 if not failed else 202 if stored else 409
        return JSONResponse(response.to_json_dict(), status_code=status, media_type=DICOM_JSON)

    storer = [Depends(access.store)]
    retriever = [Depends(access.retrieve)]
    searcher = Depends(access.search)

    @router.post("/studies", summary="STOW-RS: store instances", dependencies=storer)
    async def stow_any(request: Request) -> Response:
        return await stow(request, None)

    @router.post(
        "/studies/{study}", summary="STOW-RS: store instances of one study", dependencies=storer
    )
    async def stow_study(request: Request, study: str) -> Response:
        return await stow(request, study)

    # -- QIDO-RS ---------------------------------------------------------------------

    def _series_entries(query: _Query) -> list[_SeriesEntry]:
        rows = archive.series(query.study_filter)
        entries: dict[str, _SeriesEntry] = {}
        first_of_study: dict[str, SeriesRow] = {}
        for row in rows:
            first_of_study.setdefault(row.study_instance_uid, row)
            entries[row.series_instance_uid] = _SeriesEntry(
                row.study_instance_uid, row.series_instance_uid, row.modality,
                row.series_number, row.series_description, row,
            )  # fmt: skip
        for study_uid, study_row in first_of_study.items():
            for item in archive.instances(study=study_uid):
                entry = entries.get(item.series_instance_uid)
                if entry is None:  # a derived series: labels from its first file
                    header = _header(item.path)
                    entry = _SeriesEntry(
                        study_uid, item.series_instance_uid, header.get("Modality"),
                        header.get("SeriesNumber"), header.get("SeriesDescription"), study_row,
                    )  # fmt: skip
                    entries[item.series_instance_uid] = entry
                entry.instances.append(item)
        return [
            e
            for e in entries.values()
            if _matches(e.series, query.keys.get("SeriesInstanceUID"))
            and _matches(e.modality, query.keys.get("Modality"))
        ]

    def _study_attributes(ds: Dataset, row: SeriesRow | None) -> None:
        ds.StudyInstanceUID = row.study_instance_uid if row else ""
        ds.PatientID = (row.patient_id if row else None) or ""
        ds.PatientName = (row.patient_name if row else None) or ""
        ds.StudyDate = (row.study_date if row else None) or ""
        ds.AccessionNumber = (row.accession_number if row else None) or ""
        ds.StudyDescription = (row.study_description if row else None) or ""

    def search_studies(query: _Query, base: str) -> list[Dataset]:
        by_study: dict[str, list[_SeriesEntry]] = defaultdict(list)
        for entry in _series_entries(replace_keys(query, drop={"ModalitiesInStudy"})):
            by_study[entry.study].append(entry)
        wanted = query.keys.get("ModalitiesInStudy")
        results = []
        for study_uid, series in by_study.items():
            modalities = sorted({s.modality for s in series if s.modality})
            if wanted and not any(_matches(m, wanted) for m in modalities):
                continue
            ds = Dataset()
            _study_attributes(ds, series[0].study_row)
            ds.ModalitiesInStudy = modalities
            ds.NumberOfStudyRelatedSeries = len(series)
            ds.NumberOfStudyRelatedInstances = sum(len(s.instances) for s in series)
            ds.RetrieveURL = f"{base}/dicom-web/studies/{study_uid}"
            results.append(ds)
        return query.page(results)

    def search_series(query: _Query, base: str) -> list[Dataset]:
        results = []
        for entry in _series_entries(query):
            ds = Dataset()
            _study_attributes(ds, entry.study_row)
            ds.SeriesInstanceUID = entry.series
            ds.Modality = entry.modality or ""
            ds.SeriesNumber = entry.number if entry.number is not None else ""
            ds.SeriesDescription = entry.description or ""
            ds.NumberOfSeriesRelatedInstances = len(entry.instances)
            ds.RetrieveURL = f"{base}/dicom-web/studies/{entry.study}/series/{entry.series}"
            results.append(ds)
        return query.page(results)

    def search_instances(query: _Query, base: str) -> list[Dataset]:
        results = []
        for entry in _series_entries(query):
            for item in entry.instances:
                if not _matches(item.sop_instance_uid, query.keys.get("SOPInstanceUID")):
                    continue
                header = _header(item.path)
                if not _matches(str(header.get("SOPClassUID", "")), query.keys.get("SOPClassUID")):
                    continue
                ds = Dataset()
                _study_attributes(ds, entry.study_row)
                ds.SeriesInstanceUID = entry.series
                ds.Modality = entry.modality or ""
                ds.SOPClassUID = header.get("SOPClassUID", "")
                ds.SOPInstanceUID = item.sop_instance_uid
                ds.InstanceNumber = header.get("InstanceNumber", "")
                ds.Rows = header.get("Rows")
                ds.Columns = header.get("Columns")
                ds.RetrieveURL = (
                    f"{base}/dicom-web/studies/{entry.study}/series/{entry.series}"
                    f"/instances/{item.sop_instance_uid}"
                )
                results.append(ds)
        return query.page(results)

    def qido(
        request: Request, level: str, study: str | None, series: str | None, who: Principal | None
    ) -> Response:
        allowed = {"studies": STUDY_KEYS, "series": SERIES_KEYS, "instances": INSTANCE_KEYS}
        query = _Query(request, allowed[level])
        hide = who is not None and not who.sees_patient
        if hide and (asked := sorted(PATIENT_KEYS & set(query.keys))):
            raise HTTPException(
                403,
                f"token {who.name!r} may not search by {', '.join(asked)}",  # type: ignore[union-attr]
            )
        if study is not None:
            query.keys["StudyInstanceUID"] = study
        if series is not None:
            query.keys["SeriesInstanceUID"] = series
        base = str(request.base_url).rstrip("/")
        search = {"studies": search_studies, "series": search_series,
                  "instances": search_instances}[level]  # fmt: skip
        found = search(query, base)
        if hide:  # a viewer without patient data: identifiers hidden, as in the admin API
            for ds in found:
                for keyword in PATIENT_KEYS & set(ds.dir()):
                    if keyword == "PatientBirthDate":  # a date cannot say "hidden"
                        delattr(ds, keyword)
                    else:
                        setattr(ds, keyword, HIDDEN)
        return _json(found)

    @router.get("/studies", summary="QIDO-RS: search studies")
    def qido_studies(request: Request, who: Principal | None = searcher) -> Response:
        return qido(request, "studies", None, None, who)

    @router.get("/series", summary="QIDO-RS: search series")
    def qido_series(request: Request, who: Principal | None = searcher) -> Response:
        return qido(request, "series", None, None, who)

    @router.get("/studies/{study}/series", summary="QIDO-RS: search series of a study")
    def qido_study_series(
        request: Request, study: str, who: Principal | None = searcher
    ) -> Response:
        return qido(request, "series", study, None, who)

    @router.get("/instances", summary="QIDO-RS: search instances")
    def qido_instances(request: Request, who: Principal | None = searcher) -> Response:
        return qido(request, "instances", None, None, who)

    @router.get("/studies/{study}/instances", summary="QIDO-RS: search instances of a study")
    def qido_study_instances(
        request: Request, study: str, who: Principal | None = searcher
    ) -> Response:
        return qido(request, "instances", study, None, who)

    @router.get(
        "/studies/{study}/series/{series}/instances",
        summary="QIDO-RS: search instances of a series",
    )
    def qido_series_instances(
        request: Request, study: str, series: str, who: Principal | None = searcher
    ) -> Response:
        return qido(request, "instances", study, series, who)

    # -- WADO-RS ---------------------------------------------------------------------

    def _find(study: str, series: str | None, sop: str | None) -> list[StoredInstance]:
        found = archive.instances(study=study, series=series, sop=sop)
        if not found:
            what = "instance" if sop else "series" if series else "study"
            raise HTTPException(404, f"no such {what} on this node")
        return found

    def _check_accept(request: Request, wanted: str) -> str:
        """The transfer syntax asked for (PS3.18 8.7.3.5.2): ``*`` for each instance as
        stored, a UID, or Explicit VR Little Endian when none is named."""
        accept = request.headers.get("accept", "*/*")
        for option in accept.split(","):
            parsed = parse_content_type(option.strip())
            syntax = parsed.params.get("transfer-syntax", EXPLICIT_VR_LE).strip()
            if parsed.media_type in ("*/*", "multipart/*"):
                return syntax
            if parsed.media_type == "multipart/related" and parsed.params.get(
                "type", DICOM
            ).lower() in (wanted, "*/*"):
                return syntax
            if wanted == DICOM_JSON and parsed.media_type in (DICOM_JSON, "application/json"):
                return syntax
        raise HTTPException(406, f"this resource is served as {wanted}, not {accept}")

    def _encoded(path: Path, syntax: str) -> tuple[bytes, str]:
        """One stored instance in ``syntax`` (``*``: as stored), with its part type."""
        data = path.read_bytes()
        stored = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                     .file_meta.TransferSyntaxUID)  # fmt: skip
        if syntax in ("*", stored):
            return data, f"{DICOM}; transfer-syntax={stored}"
        if syntax != EXPLICIT_VR_LE:
            raise HTTPException(
                406, f"an instance is stored as {stored}; ask for it as stored "
                f"(transfer-syntax=*) or as {EXPLICIT_VR_LE}, not {syntax}",
            )  # fmt: skip
        ds = pydicom.dcmread(io.BytesIO(data))
        try:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                pixel_array(ds)  # a decoder failure becomes a DecodeError
                ds.decompress(generate_instance_uid=False)
            else:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        except DecodeError as exc:
            raise HTTPException(500, f"a stored instance cannot be decoded: {exc}") from exc
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
        return buffer.getvalue(), f"{DICOM}; transfer-syntax={EXPLICIT_VR_LE}"

    def _files(items: list[StoredInstance], syntax: str) -> list[tuple[bytes, str]]:
        # Encoded before the response starts, so a refusal is an HTTP error, not a cut body.
        return [_encoded(Path(item.path), syntax) for item in items]

    def retrieve(request: Request, study: str, series: str | None, sop: str | None) -> Response:
        syntax = _check_accept(request, DICOM)
        items = _find(study, series, sop)
        missing = [i.sop_instance_uid for i in items if not Path(i.path).is_file()]
        if missing:
            raise HTTPException(410, f"{len(missing)} stored file(s) no longer exist")
        chunks, header = build_related(_files(items, syntax), DICOM)
        return StreamingResponse(iter(chunks), media_type=header)

    def metadata(request: Request, study: str, series: str | None, sop: str | None) -> Response:
        _check_accept(request, DICOM_JSON)
        base = str(request.base_url).rstrip("/")
        out = []
        for item in _find(study, series, sop):
            url = (
                f"{base}/dicom-web/studies/{item.study_instance_uid}/series/"
                f"{item.series_instance_uid}/instances/{item.sop_instance_uid}"
            )
            header = _header(item.path)
            # Large binary values (and the pixel data, not read) are left to WADO-RS
            # retrieval of the instance: BulkDataURI (PS3.18 F.2.6).
            out.append(
                header.to_json_dict(
                    bulk_data_threshold=1024, bulk_data_element_handler=_bulk_uri(url)
                )
            )
        return JSONResponse(out, media_type=DICOM_JSON)

    @router.get("/studies/{study}", summary="WADO-RS: retrieve a study", dependencies=retriever)
    def wado_study(request: Request, study: str) -> Response:
        return retrieve(request, study, None, None)

    @router.get(
        "/studies/{study}/series/{series}",
        summary="WADO-RS: retrieve a series",
        dependencies=retriever,
    )
    def wado_series(request: Request, study: str, series: str) -> Response:
        return retrieve(request, study, series, None)

    @router.get(
        "/studies/{study}/series/{series}/instances/{sop}",
        summary="WADO-RS: retrieve an instance",
        dependencies=retriever,
    )
    def wado_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return retrieve(request, study, series, sop)

    @router.get(
        "/studies/{study}/metadata", summary="WADO-RS: study metadata", dependencies=retriever
    )
    def wado_study_metadata(request: Request, study: str) -> Response:
        return metadata(request, study, None, None)

    @router.get(
        "/studies/{study}/series/{series}/metadata",
        summary="WADO-RS: series metadata",
        dependencies=retriever,
    )
    def wado_series_metadata(request: Request, study: str, series: str) -> Response:
        return metadata(request, study, series, None)

    @router.get(
        "/studies/{study}/series/{series}/instances/{sop}/metadata",
        summary="WADO-RS: instance metadata",
        dependencies=retriever,
    )
    def wado_instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
        return metadata(request, study, series, sop)

    return router


def replace_keys(query: _Query, drop: Iterable[str]) -> _Query:
    """A copy of ``query`` without some matching keys and without paging."""
    copy = object.__new__(_Query)
    copy.keys = {k: v for k, v in query.keys.items() if k not in set(drop)}
    copy.limit, copy.offset = None, 0
    return copy
