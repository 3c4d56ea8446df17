"""C-STORE and STOW-RS senders returning one typed result per instance."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from pacs_node.errors import DispatchError, StorageError
from pacs_node.routing import StowDestination
from pacs_node.settings import CStoreDestination, SendSettings, TlsSettings
from pacs_node.tls import client_context

logger = logging.getLogger(__name__)


def acknowledged(status: int | None) -> bool:
    """Whether a C-STORE status means stored: success or warning (PS3.4 B.2.3)."""
    return status is not None and code_to_category(status) in ("Success", "Warning")


@dataclass(frozen=True)
class SendResult:
    """The peer's answer for one instance; ``status`` None means no answer came."""

    sop_instance_uid: str
    status: int | None
    message: str

    @property
    def ok(self) -> bool:
        """Whether the peer stored the instance."""
        return acknowledged(self.status)


def send_c_store(
    destination: CStoreDestination,
    paths: Sequence[Path],
    *,
    calling_ae_title: str,
    settings: SendSettings,
    tls: TlsSettings | None = None,
) -> list[SendResult]:
    """Send the files at ``paths`` to ``destination`` (over TLS when the destination says
    so, with the node's ``tls`` certificate and CAs), on ``settings.associations``
    associations at once, each sending its consecutive share of the files.

    Returns
    -------
    list[SendResult]
        One per file, in order, with the peer's status for each. A share whose association
        is refused is sent again on its own after the others (a peer may limit its
        associations); if that fails too, its instances have no status.

    Raises
    ------
    DispatchError
        When no association can be established (peer down, rejected, aborted).
    StorageError
        When a file to send cannot be read.
    """
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except OSError as exc:
            raise StorageError(f"cannot read derived file {path}: {exc}") from exc
    # Built once: a bad certificate fails here, not in one of several sending threads.
    secure = (client_context(tls or TlsSettings()), destination.host) if destination.tls else None
    count = max(1, min(settings.associations, len(datasets)))
    if count == 1:
        results = _send_on_one_association(destination, datasets, calling_ae_title, settings,
                                           secure)  # fmt: skip
    else:
        results = _send_in_parallel(destination, datasets, count, calling_ae_title, settings,
                                    secure)  # fmt: skip
    failed = sum(not r.ok for r in results)
    logger.info("%d instances to %s on %d association(s), %d not stored", len(results),
                destination, count, failed)  # fmt: skip
    return results


class _LimitReached(DispatchError):
    """The peer refused the association for now (A-ASSOCIATE-RJ, rejected-transient): it
    may take it once its other associations are closed."""


# Before a refused share is sent again: a pynetdicom peer counts an association closed a
# moment ago as still active for a few milliseconds.
RETRY_PAUSE_S = 0.5


def _send_in_parallel(
    destination: CStoreDestination,
    datasets: Sequence[Dataset],
    count: int,
    calling_ae_title: str,
    settings: SendSettings,
    secure: tuple[Any, str] | None,
) -> list[SendResult]:
    """``datasets`` in ``count`` consecutive shares, one association each, at once."""
    size, extra = divmod(len(datasets), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    shares = [list(datasets[bounds[i] : bounds[i + 1]]) for i in range(count)]
    stop = threading.Event()
    pool = ThreadPoolExecutor(count, thread_name_prefix="c-store")
    try:
        futures = [
            pool.submit(
                _send_on_one_association,
                destination,
                share,
                calling_ae_title,
                settings,
                secure,
                stop,
            )
            for share in shares
        ]
        outcomes: list[list[SendResult] | DispatchError] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except DispatchError as exc:
                outcomes.append(exc)
    except BaseException:
        # Interrupted (the job's time limit): the other shares stop at their next instance
        # and release their associations.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    # A peer that limits its associations refuses some of them for now: those shares go
    # again one after the other, once the others are closed. Other refusals stand.
    for index, (share, outcome) in enumerate(zip(shares, list(outcomes), strict=True)):
        if isinstance(outcome, _LimitReached):
            logger.warning("%s; sending its %d instances on one association after the others",
                           outcome, len(share))  # fmt: skip
            time.sleep(RETRY_PAUSE_S)
            try:
                outcomes[index] = _send_on_one_association(
                    destination, share, calling_ae_title, settings, secure
                )
            except DispatchError as exc:
                outcomes[index] = exc
    if all(isinstance(outcome, DispatchError) for outcome in outcomes):
        raise outcomes[0]  # type: ignore[misc]
    results: list[SendResult] = []
    for share, outcome in zip(shares, outcomes, strict=True):
        if isinstance(outcome, DispatchError):
            results += [SendResult(str(ds.SOPInstanceUID), None, f"not sent: {outcome}")
                        for ds in share]  # fmt: skip
        else:
            results += outcome
    return results


def _send_on_one_association(
    destination: CStoreDestination,
    datasets: Sequence[Dataset],
    calling_ae_title: str,
    settings: SendSettings,
    secure: tuple[Any, str] | None,
    stop: threading.Event | None = None,
) -> list[SendResult]:
    """Send ``datasets`` on one association (``secure``: TLS arguments); one result per
    dataset, in order; once ``stop`` is set, the rest are not sent."""
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = settings.connect_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    wanted = UID(destination.transfer_syntax) if destination.transfer_syntax else None
    for sop_class, syntaxes in _proposals(datasets, wanted):
        ae.add_requested_context(sop_class, syntaxes)
    # Nagle's algorithm stays on here (no TCP_NODELAY): with the answers arriving at once,
    # pynetdicom's association reactor can take a C-STORE response off the queue before
    # send_c_store waits for it (its pause flag is read stale when the requests follow
    # each other closely): seen under load as "Received unexpected C-STORE service
    # message", a DIMSE timeout and the instance sent again.
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=secure)  # fmt: skip
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted or unreachable"
        over = " over TLS" if destination.tls else ""
        message = f"association{over} with {destination} {reason}"
        rejection = getattr(assoc.acceptor, "primitive", None)
        if assoc.is_rejected and getattr(rejection, "result", None) == 0x02:  # transient
            raise _LimitReached(message)
        raise DispatchError(message)
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts}  # fmt: skip
    results: list[SendResult] = []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if stop is not None and stop.is_set():
                results.append(SendResult(uid, None, "not sent: the send was stopped"))
                continue
            if not assoc.is_established:
                results.append(SendResult(uid, None, "association lost before sending"))
                continue
            try:
                note = _encode_for(ds, accepted, wanted)
                response = assoc.send_c_store(ds)
            except (ValueError, RuntimeError, NotImplementedError) as exc:
                results.append(SendResult(uid, None, f"not sent: {exc}"))
                continue
            if "Status" not in response:
                results.append(SendResult(uid, None, "no response (timeout or abort)"))
                continue
            status = int(response.Status)
            comment = str(response.get("ErrorComment", "") or "")
            text = f"{code_to_category(status)} {comment}".strip()
            results.append(SendResult(uid, status, f"{text}; {note}" if note else text))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def _proposals(datasets: Sequence[Dataset], wanted: UID | None) -> list[tuple[str, list[str]]]:
    """Presentation contexts: per SOP class, one per compressed syntax of the files or the
    destination's configured syntax (so the peer accepts or refuses each), and one
    uncompressed, the fallback."""
    contexts: list[tuple[str, list[str]]] = []
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        stored = {UID(ds.file_meta.TransferSyntaxUID) for ds in datasets
                  if str(ds.SOPClassUID) == sop_class}  # fmt: skip
        extra = {s for s in stored | ({wanted} if wanted else set()) if s not in _UNCOMPRESSED}
        contexts += [(sop_class, [syntax]) for syntax in sorted(extra)]
        contexts.append((sop_class, list(_UNCOMPRESSED)))
    return contexts


def _encode_for(ds: Dataset, accepted: set[tuple[str, str]], wanted: UID | None) -> str:
    """Put ``ds`` in a syntax the peer accepted, in place; returns what was done, if
    anything worth recording.

    An uncompressed instance is compressed to the destination's configured (lossless)
    syntax when the peer accepted it; a compressed one goes as stored when accepted, else
    it is decoded and sent as Explicit VR Little Endian (same SOP Instance UID: lossless
    decoding changes no value).
    """
    sop_class, syntax = str(ds.SOPClassUID), UID(ds.file_meta.TransferSyntaxUID)
    if wanted is not None and wanted != syntax and not syntax.is_compressed:
        if (sop_class, str(wanted)) in accepted:
            ds.compress(wanted, generate_instance_uid=False)
            return ""
        return f"sent uncompressed: the destination did not accept {wanted.name}"
    if not syntax.is_compressed or (sop_class, str(syntax)) in accepted:
        return ""
    ds.decompress(generate_instance_uid=False)
    return f"transcoded from {syntax.name} to Explicit VR Little Endian (not accepted)"


def _stow_headers(destination: StowDestination) -> dict[str, str]:
    """Authorization from the environment variables the destination names (never stored)."""
    if destination.token_env:
        token = os.environ.get(destination.token_env)
        if not token:
            raise DispatchError(
                f"{destination}: environment variable {destination.token_env} is empty"
            )
        return {"Authorization": f"Bearer {token}"}
    if destination.username_env and destination.password_env:
        user = os.environ.get(destination.username_env, "")
        password = os.environ.get(destination.password_env, "")
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {credentials}"}
    return {}


def send_stow(
    destination: StowDestination, paths: Sequence[Path], *, settings: SendSettings
) -> list[SendResult]:
    """Send the files at ``paths`` to a DICOMweb server in one STOW-RS request.

    Returns one result per file: status 0 for the instances the server lists as stored,
    its Failure Reason for those it lists as failed (PS3.18 10.5.3).

    Raises
    ------
    DispatchError
        When the server cannot be reached or answers with an error and no per-instance
        response.
    """
    from dicomweb_client.api import DICOMwebClient
    from requests import RequestException

    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except OSError as exc:
            raise StorageError(f"cannot read derived file {path}: {exc}") from exc
    client = DICOMwebClient(
        url=str(destination), headers=_stow_headers(destination),
        timeout=settings.connect_timeout_s + settings.dimse_timeout_s,
    )  # fmt: skip
    try:
        response = client.store_instances(datasets)
    except RequestException as exc:
        http = getattr(exc, "response", None)
        body = http.content if http is not None else b""
        if http is None or not body or http.status_code not in (202, 409):
            code = f"HTTP {http.status_code}" if http is not None else type(exc).__name__
            raise DispatchError(f"STOW-RS to {destination} failed: {code} {exc}") from exc
        response = Dataset.from_json(http.json())  # per-instance failures in the body
    stored = {str(i.ReferencedSOPInstanceUID) for i in response.get("ReferencedSOPSequence", [])}
    failed = {
        str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0xC000))
        for i in response.get("FailedSOPSequence", [])
    }
    results = []
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        if uid in failed:
            results.append(
                SendResult(uid, failed[uid], f"STOW-RS failure reason 0x{failed[uid]:04X}")
            )
        elif uid in stored or not failed:
            results.append(SendResult(uid, 0x0000, "STOW-RS stored"))
        else:
            results.append(SendResult(uid, None, "not listed in the STOW-RS response"))
    logger.info("STOW-RS of %d instances to %s, %d failed", len(results), destination, len(failed))
    return results
