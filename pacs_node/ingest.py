"""Accepting one instance, whatever the way in (C-STORE or STOW-RS): check, store, record.

Both receivers call the :class:`Receiver` (:meth:`~Receiver.accept` for a C-STORE,
:meth:`~Receiver.accept_many` for a STOW-RS request) and translate its
:class:`IngestResult` (a storage status, PS3.4 B.2.3, the same codes STOW-RS reports as
Failure Reason) into their own protocol. The file is durably on disk and its row committed
before success is returned. Instances that parallel associations bring while a commit is
in flight are written and recorded together (:mod:`pacs_node.group_commit`).
"""

from __future__ import annotations

import logging
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import config
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import PIXEL_KEYWORDS, Dataset
from pydicom.hooks import hooks
from pydicom.tag import Tag
from pydicom.valuerep import AMBIGUOUS_VR, VR

from pacs_node.admission import DiskGuard
from pacs_node.db.repository import JobRepository, ReceivedInstance, Route
from pacs_node.dicom.validation import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    identifier_problem,
    is_image_storage,
    pixel_data_problem,
)
from pacs_node.errors import EnhancementError
from pacs_node.group_commit import GroupCommit
from pacs_node.metrics import ReceiverMetrics
from pacs_node.routing import Routing
from pacs_node.storage import InstanceStore

logger = logging.getLogger(__name__)

# Storage service statuses (PS3.4 Annex B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
__all__ = ["CANNOT_UNDERSTAND", "DATASET_DOES_NOT_MATCH_SOP_CLASS", "OUT_OF_RESOURCES", "SUCCESS"]


@dataclass(frozen=True)
class IngestResult:
    """The outcome for one instance: a storage status and, on failure, why."""

    status: int
    message: str | None = None
    job_id: int | None = None
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        """Stored now or earlier (a duplicate SOP Instance UID is success)."""
        return self.status == SUCCESS


# A batch result never set (a fault in this module): the instance was not stored.
_UNSTORED = IngestResult(OUT_OF_RESOURCES, "not stored (internal error)")

# An instance to store: the decoded data set, the encoded bytes, the transfer syntax.
Item = tuple[Dataset, bytes, str]


@dataclass(frozen=True)
class Origin:
    """Who sent an instance and how (recorded on the job)."""

    calling_ae_title: str | None
    called_ae_title: str | None
    source: str  # e.g. "CT1 (C-STORE)" or "STOW-RS 10.0.0.5"
    protocol: str = "C-STORE"  # or "STOW-RS" (metrics label)


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _text(ds: Dataset, keyword: str, length: int) -> str | None:
    return str(ds.get(keyword, "") or "")[:length] or None


def _received(
    ds: Dataset, uid: str, path: Path, size: int, transfer_syntax_uid: str, origin: Origin
) -> ReceivedInstance:
    """The row of a stored instance."""
    return ReceivedInstance(
        sop_instance_uid=uid,
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=transfer_syntax_uid,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        modality=_text(ds, "Modality", 16),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        series_description=_text(ds, "SeriesDescription", 64),
        path=str(path),
        size_bytes=size,
        calling_ae_title=origin.calling_ae_title,
        called_ae_title=origin.called_ae_title,
        patient_id=_text(ds, "PatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        study_date=_text(ds, "StudyDate", 8),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_description=_text(ds, "StudyDescription", 64),
        source=origin.source,
    )


def decoding_problem(ds: Dataset) -> str | None:
    """Why the data set's elements cannot all be decoded (an unknown VR, a malformed
    value, a broken sequence), or None. pydicom decodes lazily, so a damaged element
    would otherwise fail later, wherever it is first read."""
    try:
        _decode_all(ds)
    except Exception as exc:  # noqa: BLE001 - edge: any decoding failure is the reason
        detail = str(exc) if isinstance(exc, _Undecodable) else f"{type(exc).__name__}: {exc}"
        return f"cannot decode dataset: {detail}"[:200]
    return None


class _Undecodable(ValueError):
    """An element that cannot be decoded; the message names it."""


def _decode_all(ds: Dataset) -> None:
    """Decode every element of ``ds`` and of its sequences' items as reading it would,
    raising what that raises (with the element's tag).

    What ``Dataset.walk`` does, in less time: a plain element is converted from its raw
    form without the dataset's item machinery and kept (private elements and pixel data
    are not kept: reading them converts them again, the same way), unless the same bytes
    of a public element were decoded before (:data:`_DECODED`); sequences, elements of
    ambiguous VR and deferred values are read through the dataset itself, which keeps what
    it converts.
    """
    # The encoding reading would use (Dataset.__getitem__); the Specific Character Set
    # itself is read in the default encoding.
    encoding = ds.original_character_set or ds._character_set
    settings = _decoding_settings()
    for tag, elem in list(ds._dict.items()):
        try:
            if isinstance(elem, RawDataElement) and _plain(elem):
                element_encoding = default_encoding if tag == _CHARSET else encoding
                key = _decoded_key(elem, element_encoding, settings)
                if key is not None and key in _DECODED:
                    continue  # these very bytes decoded before (left as read)
                converted = convert_raw_data_element(elem, encoding=element_encoding, ds=ds)
                if converted.VR != VR.SQ and converted.VR not in AMBIGUOUS_VR:
                    if key is not None:
                        if len(_DECODED) >= DECODED_REMEMBERED:
                            _DECODED.clear()
                        _DECODED.add(key)
                    if not tag.is_private and tag not in PIXEL_KEYWORDS:
                        # Kept, as reading it keeps it (for such an element,
                        # Dataset.__setitem__ only stores it).
                        ds._dict[tag] = converted
                    continue
            element = ds[tag]  # converted and kept by the dataset
        except Exception as exc:
            raise _Undecodable(f"element {tag}: {type(exc).__name__}: {exc}") from exc
        if element.VR == VR.SQ:
            for item in element.value:
                _decode_all(item)


_CHARSET = Tag(0x00080005)

# Public elements this process has decoded without error, by everything their decoding
# depends on (tag, VR, bytes, encoding, byte order, and pydicom's reading settings; only a
# private element's VR depends on its dataset). Decoding is deterministic, so the same key
# decodes again; most of a series' header repeats from instance to instance, and is then
# not decoded at the door. Values unique to each instance (UIDs, positions) fill it, so it
# is emptied every few thousand instances; short values only, so it stays small.
DECODED_REMEMBERED = 1 << 14
DECODED_VALUE_BYTES = 256  # longer values are decoded each time
_DECODED: set[tuple[object, ...]] = set()


def _decoding_settings() -> tuple[object, ...]:
    """The pydicom settings and hooks a raw element's decoding depends on."""
    return (
        config.settings.reading_validation_mode,
        config.convert_wrong_length_to_UN,
        config.replace_un_with_known_vr,
        config.data_element_callback,
        hooks.raw_element_vr,
        hooks.raw_element_value,
        bool(hooks.raw_element_kwargs),
    )


def _decoded_key(
    elem: RawDataElement,
    encoding: str | MutableSequence[str] | None,
    settings: tuple[object, ...],
) -> tuple[object, ...] | None:
    """What decoding ``elem`` depends on, or None for an element not to remember."""
    if elem.tag.is_private or elem.value is None or len(elem.value) > DECODED_VALUE_BYTES:
        return None
    charset = encoding if isinstance(encoding, str) or encoding is None else tuple(encoding)
    return (int(elem.tag), elem.VR, elem.length, elem.value, elem.is_implicit_VR,
            elem.is_little_endian, charset, settings)  # fmt: skip


def _plain(elem: RawDataElement) -> bool:
    """Whether ``elem`` can be converted on its own: its value was read, and it is not a
    sequence (by its explicit VR, or the dictionary's for an implicit one)."""
    if elem.value is None and elem.length != 0:  # deferred
        return False
    vr = elem.VR
    if vr is None and dictionary_has_tag(elem.tag):
        vr = dictionary_VR(elem.tag)
    return vr != VR.SQ


def check_dataset(ds: Dataset, transfer_syntax_uid: str) -> IngestResult | None:
    """A failure result when ``ds`` cannot be filed or its pixels used, else None."""
    problem = identifier_problem(ds)
    if problem is not None:
        return IngestResult(DATASET_DOES_NOT_MATCH_SOP_CLASS, problem)
    if is_image_storage(str(ds.SOPClassUID)):
        found = pixel_data_problem(ds, transfer_syntax_uid)
        if found is not None:
            return IngestResult(found.status, found.comment)
    return None


class Receiver:
    """Stores checked instances under hashed names and records them in the job database."""

    def __init__(
        self,
        store: InstanceStore,
        repository: JobRepository,
        routing: Routing,
        metrics: ReceiverMetrics | None = None,
        disk: DiskGuard | None = None,
    ) -> None:
        self.store = store
        self.repository = repository
        self.routing = routing
        self.metrics = metrics
        self.disk = disk
        # Checked C-STOREs of parallel associations, stored and recorded together.
        self.group: GroupCommit[tuple[Item, Origin], IngestResult] = GroupCommit(
            self._store_group, _UNSTORED
        )

    def disk_refusal(self) -> str | None:
        """Why new data must be refused now (the data disk past its watermark), or None."""
        return self.disk.refusal() if self.disk is not None else None

    def count(self, protocol: str, result: IngestResult) -> IngestResult:
        """Count ``result`` in the receiver metrics and return it."""
        if self.metrics is not None:
            if result.ok:
                self.metrics.received.labels(protocol).inc()
            else:
                self.metrics.rejected.labels(protocol, f"0x{result.status:04X}").inc()
        return result

    def route(self, ds: Dataset, origin: Origin) -> Route:
        """What the routing rules choose for the series of ``ds`` (used if it starts a job)."""
        decision = self.routing.decide(ds, origin.calling_ae_title, origin.called_ae_title)
        destinations = self.routing.resolved_destinations(decision, origin.calling_ae_title)
        return Route(
            decision.preset, destinations, decision.rule, decision.strength,
            decision.forward_skipped, decision.qa_failure,
        )  # fmt: skip

    def _refusal(
        self, ds: Dataset, transfer_syntax_uid: str, origin: Origin, decoded: bool = False
    ) -> IngestResult | None:
        """Why ``ds`` is refused at the door (undecodable, or failing the input checks);
        ``decoded``: the caller has found every element decodable already."""
        problem = None if decoded else decoding_problem(ds)
        if problem is not None:
            logger.warning("%s: instance refused: %s", origin.source, problem)
            return IngestResult(CANNOT_UNDERSTAND, problem)
        try:
            failure = check_dataset(ds, transfer_syntax_uid)
        except Exception as exc:  # noqa: BLE001 - edge: an undecodable element is a status
            failure = IngestResult(CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}")
        if failure is not None:
            uid = str(ds.get("SOPInstanceUID", "") or "")
            logger.warning("%s: instance %s refused: %s", origin.source, uid, failure.message)
        return failure

    def accept_many(
        self, items: Sequence[Item], origin: Origin, decoded: bool = False
    ) -> list[IngestResult]:
        """:meth:`accept` for the instances of one request (``(dataset, encoded bytes,
        transfer syntax)`` each, a STOW-RS body), in order, counted in the metrics.

        Each is checked alone; those that pass are written together (one flush of the
        filesystem for all: :meth:`InstanceStore.write_many`) and recorded with one
        transaction per series. Every result holds only once the whole batch is durable,
        so the caller answers after this returns. ``decoded``: the caller has found every
        element of every dataset decodable (:func:`decoding_problem`) already.
        """
        results: list[IngestResult | None] = [None] * len(items)
        ready = []
        for index, (ds, _, transfer_syntax_uid) in enumerate(items):
            results[index] = self._refusal(ds, transfer_syntax_uid, origin, decoded)
            if results[index] is None:
                ready.append(index)
        if ready:
            self._store_checked(items, ready, results, [origin] * len(items))
        return [self.count(origin.protocol, r or _UNSTORED) for r in results]

    def _store_group(self, batch: Sequence[tuple[Item, Origin]]) -> list[IngestResult]:
        """Store and record checked instances that arrived together (a group commit).

        One attempt each, as if each had come alone: a failure of the database fails the
        batch at once (its senders try again), and a write that fails is retried for each
        instance alone, so that one sender's bad file does not fail another's instance.
        """
        items = [item for item, _ in batch]
        origins = [origin for _, origin in batch]
        results: list[IngestResult | None] = [None] * len(batch)
        try:
            self._store_many(items, list(range(len(batch))), results, origins, alone=True)
        except Exception as exc:  # noqa: BLE001 - edge: the database down; a status each
            for index, result in enumerate(results):
                if result is None:
                    uid = str(items[index][0].get("SOPInstanceUID", "") or "")
                    results[index] = self._not_stored(uid, exc, origins[index])
        return [r or _UNSTORED for r in results]

    def _store_checked(
        self,
        items: Sequence[Item],
        ready: list[int],
        results: list[IngestResult | None],
        origins: Sequence[Origin],
    ) -> None:
        """Store and record the checked ``items[ready]`` together, setting their
        ``results``; when the batch fails as a whole, each is tried alone."""
        try:
            self._store_many(items, ready, results, origins)
        except Exception:  # edge: a failure outside one instance (the database down)
            sources = ", ".join(sorted({origins[index].source for index in ready}))
            logger.exception("%s: a batch could not be stored together", sources)
            for index in ready:
                if results[index] is None:
                    results[index] = self._store_one(*items[index], origins[index])
                if not results[index].ok:  # type: ignore[union-attr]
                    # The batch may have written its file before it failed.
                    self._forget_unrecorded(str(items[index][0].get("SOPInstanceUID", "")))

    def _store_many(
        self,
        items: Sequence[Item],
        ready: list[int],
        results: list[IngestResult | None],
        origins: Sequence[Origin],
        alone: bool = False,
    ) -> None:
        """Store and record ``items[ready]`` (sent by ``origins[ready]``), setting their
        ``results``; ``alone``: when writing the files together fails, each instance is
        written and recorded alone instead of all failing."""
        uid_of = {i: str(items[i][0].get("SOPInstanceUID", "") or "") for i in ready}
        known = self.repository.find_instances(sorted(set(uid_of.values())))
        fresh = []
        for index in ready:
            if uid_of[index] in known:
                logger.info("%s: instance %s is a duplicate, already stored",
                            origins[index].source, uid_of[index])  # fmt: skip
                results[index] = IngestResult(SUCCESS, duplicate=True)
            else:
                fresh.append(index)
        if not fresh:
            return
        source = ", ".join(sorted({origins[index].source for index in fresh}))
        full = self.disk_refusal()
        if full is not None:
            logger.warning("%s: %d instances refused: %s", source, len(fresh), full)
            for index in fresh:
                results[index] = IngestResult(OUT_OF_RESOURCES, full)
            return
        first: dict[str, int] = {}  # a UID sent twice in one request is written once
        for index in fresh:
            first.setdefault(uid_of[index], index)
        paths = {uid: self.store.received_path(uid) for uid in first}
        try:
            self.store.write_many([(paths[uid], items[i][1]) for uid, i in first.items()])
        except EnhancementError as exc:
            logger.error("%s: %d instances: storage failed: %s", source, len(fresh), exc)
            for uid in first:
                self._forget_unrecorded(uid)
            if alone and len(first) > 1:
                for index in fresh:
                    results[index] = self._store_one(*items[index], origins[index])
                return
            for index in fresh:
                results[index] = IngestResult(OUT_OF_RESOURCES, str(exc))
            return
        received = [
            _received(items[i][0], uid_of[i], paths[uid_of[i]], len(items[first[uid_of[i]]][1]),
                      items[i][2], origins[i])
            for i in fresh
        ]  # fmt: skip
        # Routed (once per series, when its job opens) on the data set and the origin of
        # the instance that opens it.
        routed = {uid: (items[i][0], origins[i]) for uid, i in first.items()}
        outcomes = self.repository.record_instances(
            received, lambda item: self.route(*routed[item.sop_instance_uid])
        )
        for index, outcome in zip(fresh, outcomes, strict=True):
            if isinstance(outcome, Exception):
                results[index] = self._not_stored(uid_of[index], outcome, origins[index])
            else:
                results[index] = IngestResult(
                    SUCCESS, job_id=outcome.job_id, duplicate=outcome.duplicate
                )

    def accept(
        self, ds: Dataset, encoded: bytes, transfer_syntax_uid: str, origin: Origin
    ) -> IngestResult:
        """Check, store and record one instance, counted in the metrics; never raises.

        The checks run in the caller's thread. The write and the row go through the
        group commit: alone, at once; with the instances of other associations that arrive
        while a commit is in flight, together with them. Success is returned only once the
        instance's file is durable and its row committed.

        Parameters
        ----------
        ds
            The decoded dataset (pixel data included, to measure its length).
        encoded
            The bytes to store: a DICOM file, preamble and file meta included.
        transfer_syntax_uid
            Transfer syntax of the dataset.
        origin
            Sender, for the job row and its audit trail.
        """
        failure = self._refusal(ds, transfer_syntax_uid, origin)
        if failure is None:
            return self.count(
                origin.protocol, self.group.submit(((ds, encoded, transfer_syntax_uid), origin))
            )
        return self.count(origin.protocol, failure)

    def _forget_unrecorded(self, uid: str) -> None:
        """Remove the file of a refused instance, once the database confirms that no row
        holds it (a concurrent copy of the same instance may have been recorded); while the
        database cannot say, the file stays, and the auditor would report it."""
        try:
            if uid and not self.repository.find_instance(uid, settled=True):
                self.store.received_path(uid).unlink(missing_ok=True)
        except Exception:  # noqa: BLE001 - the database is still down: keep the file
            logger.warning("instance %s: file kept until the database can be asked", uid)

    def _store_one(
        self, ds: Dataset, encoded: bytes, transfer_syntax_uid: str, origin: Origin
    ) -> IngestResult:
        """Write the checked ``ds`` (its bytes ``encoded``) atomically and record it, alone;
        never raises."""
        uid = str(ds.get("SOPInstanceUID", "") or "")
        try:
            if self.repository.find_instance(uid):
                logger.info("%s: instance %s is a duplicate, already stored", origin.source, uid)
                return IngestResult(SUCCESS, duplicate=True)
            full = self.disk_refusal()
            if full is not None:
                logger.warning("%s: instance %s refused: %s", origin.source, uid, full)
                return IngestResult(OUT_OF_RESOURCES, full)
            path = self.store.received_path(uid)
            self.store.write_atomic(path, encoded)
            outcome = self.repository.record_instance(
                _received(ds, uid, path, len(encoded), transfer_syntax_uid, origin),
                lambda: self.route(ds, origin),  # routed once per series, when its job opens
            )
        except Exception as exc:  # noqa: BLE001 - edge: database or disk failure, logged there
            return self._not_stored(uid, exc, origin)
        return IngestResult(SUCCESS, job_id=outcome.job_id, duplicate=outcome.duplicate)

    def _not_stored(self, uid: str, exc: Exception, origin: Origin) -> IngestResult:
        """The status of an instance that could not be stored or recorded, logged; its
        file removed unless a row names it."""
        if isinstance(exc, EnhancementError):
            logger.error("%s: instance %s: storage failed: %s", origin.source, uid, exc)
            result = IngestResult(OUT_OF_RESOURCES, str(exc))
        else:
            logger.error("%s: instance %s could not be recorded", origin.source, uid,
                         exc_info=exc)  # fmt: skip
            result = IngestResult(
                OUT_OF_RESOURCES, f"could not record instance: {type(exc).__name__}"
            )
        self._forget_unrecorded(uid)
        return result
