"""Real DICOM peers for integration tests: Orthanc, a capturing storage SCP, dcmtk and dicom3tools.

Everything here starts real processes or real sockets on 127.0.0.1, waits with bounded
timeouts and cleans up after itself, so an end-to-end test can talk to the node exactly as a
PACS or a modality would. Nothing here imports :mod:`pacs_node`; the helpers are peers, not
part of the system under test.

Binary locations can be overridden with ``ORTHANC_BINARY`` and ``ORTHANC_DICOMWEB_PLUGIN``;
the dcmtk and dicom3tools commands are looked up on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import UncompressedTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

ORTHANC_BINARY = os.environ.get("ORTHANC_BINARY", "/usr/sbin/Orthanc")
"""Path of the Orthanc server executable (Debian package ``orthanc``)."""

_DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)

#: Status that a storage SCP answers for success (PS3.7 C.4.2.1.4).
STATUS_SUCCESS = 0x0000


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Returns
    -------
    int
        A port number chosen by the kernel. Another process may still take it before the
        caller binds it; the window is small enough for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def orthanc_binary() -> str | None:
    """Return the Orthanc executable path if it exists and is executable, else ``None``."""
    path = Path(ORTHANC_BINARY)
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def dicomweb_plugin() -> str | None:
    """Return the path of Orthanc's DICOMweb plugin shared library, or ``None`` if absent.

    ``ORTHANC_DICOMWEB_PLUGIN`` wins; otherwise the Debian ``orthanc-dicomweb`` locations
    (``/usr/share/orthanc/plugins/libOrthancDicomWeb.so``, a symlink into
    ``/usr/lib/orthanc``) are tried, then any ``libOrthancDicomWeb.so*`` under
    ``/usr/lib/orthanc``.
    """
    override = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    if override:
        return override if Path(override).is_file() else None
    for candidate in _DICOMWEB_PLUGIN_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    versioned = sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
    return str(versioned[-1]) if versioned else None


def _wait_port_open(port: int, deadline: float) -> bool:
    """Return whether a TCP connect to 127.0.0.1:``port`` succeeds before ``deadline``."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file (empty if it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class OrthancPeer:
    """A private Orthanc server process, configured from scratch in a temporary directory.

    The Debian ``orthanc`` service and its ``/etc/orthanc`` configuration are never touched:
    the process gets its own JSON configuration, storage and index directories, and free
    DICOM and HTTP ports. The REST API listens on 127.0.0.1 without authentication.

    Parameters
    ----------
    aet
        Orthanc's own AE title (``DicomAet``); at most 16 characters (PS3.5 Table 6.2-1, AE).
    dicomweb
        Load the DICOMweb plugin and serve it under ``/dicom-web/``.
    stable_age_s
        ``StableAge``: seconds without new instances before Orthanc calls a series stable.
    startup_timeout_s
        How long :meth:`start` waits for the REST API and the DICOM port to answer.
    stop_timeout_s
        How long :meth:`stop` waits after SIGTERM before it sends SIGKILL.
    http_timeout_s
        Timeout of each REST request.
    extra_config
        Further configuration keys merged over the generated ones (e.g.
        ``{"OverwriteInstances": True}``).

    Examples
    --------
    >>> with OrthancPeer("PACS", dicomweb=True) as pacs:  # doctest: +SKIP
    ...     storescu(path, pacs.dicom_port, pacs.aet)
    ...     pacs.wait_for_instances(series_uid, count=1, timeout_s=10)
    """

    def __init__(
        self,
        aet: str = "ORTHANC",
        *,
        dicomweb: bool = False,
        stable_age_s: int = 1,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        http_timeout_s: float = 10.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 < len(aet) <= 16:
            raise ValueError(f"aet must be 1-16 characters, got {aet!r}")
        if stable_age_s < 1:
            raise ValueError(f"stable_age_s must be >= 1, got {stable_age_s}")
        self.aet = aet
        self.dicomweb = dicomweb
        self.stable_age_s = stable_age_s
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.http_timeout_s = http_timeout_s
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self.dicom_port = 0
        self.http_port = 0
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Root URL of the REST API, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root, ``http://127.0.0.1:PORT/dicom-web`` (needs ``dicomweb=True``)."""
        return f"{self.base_url}/dicom-web"

    @property
    def log_path(self) -> Path:
        """Path of the file that receives Orthanc's stdout and stderr."""
        if self._workdir is None:
            raise RuntimeError("Orthanc has not been started")
        return Path(self._workdir.name) / "orthanc.log"

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of Orthanc's log."""
        return _tail(self.log_path, lines)

    def _config(self, workdir: Path) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Name": f"pytest-{self.aet}",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # Accept associations whatever called AE title the peer uses, and C-STORE/C-ECHO
            # from modalities not listed in DicomModalities (the node is not registered).
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "StableAge": self.stable_age_s,
            "SaveJobs": False,
            "Plugins": [],
        }
        if self.dicomweb:
            plugin = dicomweb_plugin()
            if plugin is None:
                raise FileNotFoundError(
                    "dicomweb=True but no libOrthancDicomWeb.so was found "
                    "(install orthanc-dicomweb or set ORTHANC_DICOMWEB_PLUGIN)"
                )
            config["Plugins"] = [plugin]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        config.update(self.extra_config)
        return config

    def start(self) -> Self:
        """Write the configuration, start Orthanc and wait until REST and DICOM answer.

        Raises
        ------
        FileNotFoundError
            Orthanc (or, with ``dicomweb=True``, the plugin) is not installed.
        RuntimeError
            Orthanc exited or did not answer within ``startup_timeout_s``; the message holds
            the tail of its log.
        """
        if self._process is not None:
            raise RuntimeError("Orthanc is already running")
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError(f"Orthanc executable not found at {ORTHANC_BINARY}")
        self._workdir = tempfile.TemporaryDirectory(prefix="orthanc-peer-")
        workdir = Path(self._workdir.name)
        self.dicom_port = free_port()
        self.http_port = free_port()
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(self._config(workdir), indent=2), encoding="utf-8")
        self._log_file = self.log_path.open("wb")
        try:
            self._process = subprocess.Popen(
                [binary, str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
            self._client = httpx.Client(
                base_url=self.base_url, timeout=self.http_timeout_s, trust_env=False
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None and self._client is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with code {self._process.returncode} during start-up; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                if self._client.get("/system").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(
                f"Orthanc REST API on port {self.http_port} did not answer within "
                f"{self.startup_timeout_s} s; log tail:\n{self.log_tail()}"
            )
        if not _wait_port_open(self.dicom_port, deadline):
            raise RuntimeError(
                f"Orthanc DICOM port {self.dicom_port} did not open within "
                f"{self.startup_timeout_s} s; log tail:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after ``stop_timeout_s``) and delete its files.

        Safe to call more than once and after a failed :meth:`start`.
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=self.stop_timeout_s)
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- REST API ------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """The :class:`httpx.Client` bound to the REST API (for calls not wrapped here)."""
        if self._client is None:
            raise RuntimeError("Orthanc is not running")
        return self._client

    def _get_json(self, path: str) -> Any:
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def series(self) -> list[dict[str, Any]]:
        """Return every stored series as Orthanc's expanded series objects.

        Each item has ``ID`` (the Orthanc series id), ``MainDicomTags`` (with
        ``SeriesInstanceUID``, ``Modality``...), ``Instances`` (Orthanc instance ids),
        ``ParentStudy`` and ``Status``/``IsStable``.
        """
        result: list[dict[str, Any]] = self._get_json("/series?expand")
        return result

    def instances_of_series(self, orthanc_series_id: str) -> list[dict[str, Any]]:
        """Return the expanded instance objects of one series (``/series/{id}/instances``).

        Each item has ``ID`` (the Orthanc instance id), ``MainDicomTags`` (with
        ``SOPInstanceUID``, ``InstanceNumber``...) and ``FileSize``.
        """
        result: list[dict[str, Any]] = self._get_json(f"/series/{orthanc_series_id}/instances")
        return result

    def find_series(self, series_instance_uid: str) -> str | None:
        """Return the Orthanc id of the series with this Series Instance UID, or ``None``."""
        response = self.client.post("/tools/lookup", content=series_instance_uid)
        response.raise_for_status()
        for match in response.json():
            if match.get("Type") == "Series":
                orthanc_id: str = match["ID"]
                return orthanc_id
        return None

    def instance_file(self, orthanc_instance_id: str) -> bytes:
        """Return the stored DICOM Part 10 file of an instance (``/instances/{id}/file``)."""
        response = self.client.get(f"/instances/{orthanc_instance_id}/file")
        response.raise_for_status()
        return response.content

    def wait_for_instances(
        self, series_instance_uid: str, count: int, timeout_s: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll until the series holds at least ``count`` instances and return them.

        Parameters
        ----------
        series_instance_uid
            The DICOM Series Instance UID (0020,000E), not an Orthanc id.
        count
            Minimum number of instances to wait for.
        timeout_s
            Upper bound of the wait.

        Returns
        -------
        list of dict
            The expanded instance objects (see :meth:`instances_of_series`).

        Raises
        ------
        TimeoutError
            Fewer than ``count`` instances arrived in time; the message says how many did.
        """
        deadline = time.monotonic() + timeout_s
        seen: list[dict[str, Any]] = []
        while True:
            series_id = self.find_series(series_instance_uid)
            if series_id is not None:
                seen = self.instances_of_series(series_id)
                if len(seen) >= count:
                    return seen
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Orthanc {self.aet} holds {len(seen)} of {count} instances of series "
                    f"{series_instance_uid} after {timeout_s} s"
                )
            time.sleep(0.1)


class CaptureSCP:
    """An in-process pynetdicom Storage SCP that keeps what it receives.

    It accepts every storage SOP class pynetdicom knows (plus Verification) with the
    uncompressed transfer syntaxes (implicit/explicit VR little endian, deflated, explicit
    big endian) on 127.0.0.1 and a free port. Received datasets get their File Meta
    Information attached (``ds.file_meta``) so they can be written or compared as files.

    Parameters
    ----------
    aet
        The SCP's AE title. Called AE titles are not checked.
    store_status
        Status answered to C-STORE requests (e.g. ``0xA700`` "Refused: Out of resources",
        PS3.4 Table B.2-1). Only datasets answered with success (``0x0000``) or a warning
        (``0xB000``-``0xB007``, ``0x0107``, ``0x0116``) are kept in :attr:`datasets`.
    first_n
        Answer ``store_status`` for the first ``first_n`` C-STORE requests only and success
        afterwards; ``None`` answers it for every request.
    refuse_associations
        Reject every association request (A-ASSOCIATE-RJ, rejected-permanent, "calling AE
        title not recognized", PS3.8 9.3.4), as an SCP that does not know the node would.
    compressed
        Compressed transfer syntaxes accepted besides the uncompressed ones (each as its
        own choice: proposed alone in a context, it is accepted).
    """

    def __init__(
        self,
        aet: str = "CAPTURE",
        *,
        store_status: int = STATUS_SUCCESS,
        first_n: int | None = None,
        refuse_associations: bool = False,
        compressed: Sequence[str] = (),
    ) -> None:
        if first_n is not None and first_n < 0:
            raise ValueError(f"first_n must be >= 0 or None, got {first_n}")
        self.aet = aet
        self.store_status = store_status
        self.first_n = first_n
        self.refuse_associations = refuse_associations
        self.compressed = list(compressed)
        self.port = 0
        self._datasets: list[Dataset] = []
        self._statuses: list[int] = []
        self._calling_aets: list[str] = []
        self._condition = threading.Condition()
        self._server: ThreadedAssociationServer | None = None
        self._ae: AE | None = None

    @property
    def datasets(self) -> list[Dataset]:
        """Copy of the datasets kept so far (success or warning answered), in arrival order."""
        with self._condition:
            return list(self._datasets)

    @property
    def statuses(self) -> list[int]:
        """Copy of the status answered to every C-STORE request so far, in order."""
        with self._condition:
            return list(self._statuses)

    @property
    def calling_aets(self) -> list[str]:
        """Calling AE title of the association of every C-STORE request so far."""
        with self._condition:
            return list(self._calling_aets)

    def _status_for(self, index: int) -> int:
        if self.first_n is None or index < self.first_n:
            return self.store_status
        return STATUS_SUCCESS

    def _handle_store(self, event: Event) -> int:
        # Decode before taking the lock. An exception raised here makes pynetdicom answer
        # 0xC211 (its "exception in handler" status) and nothing is recorded.
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        calling_aet = str(event.assoc.requestor.ae_title).strip()
        with self._condition:
            status = self._status_for(len(self._statuses))
            self._statuses.append(status)
            self._calling_aets.append(calling_aet)
            if _is_kept(status):
                self._datasets.append(dataset)
            self._condition.notify_all()
        return status

    def start(self) -> Self:
        """Start the server thread (non-blocking) on 127.0.0.1 and a free port."""
        if self._server is not None:
            raise RuntimeError("CaptureSCP is already running")
        ae = AE(ae_title=self.aet)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(
                    context.abstract_syntax, [*UncompressedTransferSyntaxes, *self.compressed]
                )
        ae.add_supported_context(Verification, UncompressedTransferSyntaxes)
        ae.acse_timeout = 10
        ae.dimse_timeout = 30
        ae.network_timeout = 30
        if self.refuse_associations:
            # pynetdicom rejects any requestor whose calling AE title is not in this list.
            ae.require_calling_aet = ["NO-PEER-ALLOWED"]
        self.port = free_port()
        self._ae = ae
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._handle_store)],
        )
        return self

    def stop(self) -> None:
        """Shut the server down and wait for its thread; safe to call more than once."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Dataset]:
        """Wait until at least ``count`` datasets are kept and return a copy of them.

        Raises
        ------
        TimeoutError
            Fewer than ``count`` datasets arrived within ``timeout_s``.
        """
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._datasets) >= count, timeout_s):
                raise TimeoutError(
                    f"CaptureSCP {self.aet} kept {len(self._datasets)} of {count} datasets "
                    f"after {timeout_s} s (statuses answered: "
                    f"{[hex(s) for s in self._statuses]})"
                )
            return list(self._datasets)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _is_kept(status: int) -> bool:
    """Whether a C-STORE status means the SCP stored the object (success or warning).

    PS3.4 Table B.2-1: 0x0000 success; 0xB000, 0xB007, 0xB006 warnings (coercion, data set
    does not match SOP class, elements discarded); PS3.7 C.4.2.1.4 also lists 0x0107 and
    0x0116 as warnings.
    """
    return status == STATUS_SUCCESS or status in {0x0107, 0x0116} or 0xB000 <= status <= 0xBFFF


def _require(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise FileNotFoundError(f"{command!r} not found on PATH")
    return path


def storescu(
    files_or_dir: str | Path | Iterable[str | Path],
    port: int,
    called_aet: str,
    calling_aet: str = "STORESCU",
    host: str = "127.0.0.1",
    scan_dir: bool = False,
    extra_args: Sequence[str] = (),
    timeout_s: float = 120.0,
    verbose: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's ``storescu`` and return the finished process.

    Parameters
    ----------
    files_or_dir
        One path or several; with ``scan_dir=True`` directories among them are scanned.
    port, host
        The storage SCP's address.
    called_aet, calling_aet
        AE titles of the association (``-aec`` / ``-aet``).
    scan_dir
        Pass ``+sd +r``: scan the given directories recursively for input files.
    extra_args
        Further options placed before the address: ``("-R",)`` to propose only the SOP
        classes of the files (see Notes), ``("-nh",)`` to go on after a failed store,
        ``("-xs",)`` to propose JPEG lossless as well.
    timeout_s
        Bound of the whole run; past it the process is killed and
        ``subprocess.TimeoutExpired`` raised. The DIMSE, ACSE and TCP timeouts are 30 s.
    verbose
        Pass ``-v`` so that stderr holds one ``I: Received Store Response (...)`` line per
        file; without it storescu prints nothing for a refused store.

    Returns
    -------
    subprocess.CompletedProcess
        ``returncode``, ``stdout`` and ``stderr`` as text; storescu logs to stderr.
        :func:`storescu_errors` extracts its ``E:`` and ``F:`` lines.

    Notes
    -----
    Observed with dcmtk 3.6.7 (Debian bookworm), checked in ``test_peers.py``:

    * **Exit status.** With the default ``--halt``, the first non-success C-STORE status
      ends the run and the exit status is the status's high byte (0xA700 gives 167, 0xC000
      gives 192); a warning (0xB000) exits 0. With ``-nh`` storescu goes on and **exits 0
      even if stores failed**: read the log (:func:`storescu_errors`) or the peer instead.
      A rejected or refused association exits 1 with ``F: Association Rejected`` /
      ``F: Association Request Failed``.
    * **DICOMDIR and other non-storage files.** By default storescu proposes a fixed list
      of storage SOP classes and does not look at the files before the association, so a
      DICOMDIR ("No SOP Class or Instance UID in file"), a non-DICOM file ("Bad DICOM
      file") or a non-storage object such as a worklist item ("No presentation context")
      is *attempted* and fails on the sending side, without a C-STORE on the wire. With
      ``--halt`` that aborts the association and the files after it are not sent (exit 1);
      with ``-nh`` they are logged as ``E:`` and skipped. storescu never reads a DICOMDIR
      to find the files it references: a folder is sent as the files the scan finds.
    * **``-R``** (propose only the SOP classes found in the files) reads every file
      before the association. A DICOMDIR, non-DICOM or non-storage file is then fatal
      (``F: missing SOP class ...``, exit 1, nothing sent) under ``--halt``, and skipped
      with ``W: ... ignoring file`` under ``-nh``. So a DICOM media folder is best sent
      with ``extra_args=("-R", "-nh")`` and the result checked at the receiver. ``-R`` is
      also needed for storage classes missing from the default proposal, e.g.
      Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4); CT, MR, Enhanced CT/MR and the
      Secondary Capture classes are in the default list.
    * A file without File Meta Information (a bare dataset) is read and sent.
    * ``+sd`` sends files in directory order (readdir), not sorted by name.
    """
    if isinstance(files_or_dir, str | Path):
        paths = [str(files_or_dir)]
    else:
        paths = [str(p) for p in files_or_dir]
    if not paths:
        raise ValueError("files_or_dir is empty")
    args = [
        _require("storescu"),
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "-to",
        "30",
        "-ta",
        "30",
        "-td",
        "30",
    ]
    if verbose:
        args.append("-v")
    if scan_dir:
        args += ["+sd", "+r"]
    args += [*extra_args, host, str(port), *paths]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def storescu_errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Return the ``E:`` and ``F:`` (error and fatal) log lines of a storescu or echoscu run."""
    return [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]


def echoscu(
    port: int,
    called_aet: str,
    calling_aet: str = "ECHOSCU",
    host: str = "127.0.0.1",
    timeout_s: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO with dcmtk's ``echoscu``; ``returncode == 0`` means the peer answered."""
    args = [
        _require("echoscu"),
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        "10",
        host,
        str(port),
    ]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def dciodvfy(path: str | Path, timeout_s: float = 60.0) -> tuple[list[str], list[str]]:
    """Validate a DICOM file against its IOD with dicom3tools' ``dciodvfy``.

    Parameters
    ----------
    path
        A DICOM Part 10 file.
    timeout_s
        Bound of the run.

    Returns
    -------
    tuple of (list of str, list of str)
        The ``Error - ...`` lines and the ``Warning - ...`` lines, stripped, in order.
        dciodvfy writes both to stderr and its exit status does not tell errors from
        warnings, so the lines are the result.

    Raises
    ------
    FileNotFoundError
        ``dciodvfy`` is not installed or ``path`` does not exist.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    completed = subprocess.run(
        [_require("dciodvfy"), str(file)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    errors: list[str] = []
    warnings: list[str] = []
    for line in (completed.stdout + "\n" + completed.stderr).splitlines():
        line = line.strip()
        if line.startswith("Error"):
            errors.append(line)
        elif line.startswith("Warning"):
            warnings.append(line)
    return errors, warnings
