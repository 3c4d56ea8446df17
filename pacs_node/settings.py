"""The node's one typed configuration object, built once per process in an entry point.

Sources, highest priority first: explicit arguments, environment variables
(``PACS_NODE_`` prefix, ``__`` between nested names), a YAML overlay named by
``PACS_NODE_CONFIG`` (or passed explicitly), ``configs/default.yaml``, field defaults.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from pacs_node.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _config_dir() -> Path:
    """Where the shipped ``configs/`` are: the checkout's (or an editable install's), else
    the installed package's (a wheel puts them in ``<prefix>/share/pacs-node/configs``)."""
    candidates = (REPO_ROOT / "configs", Path(sys.prefix) / "share" / "pacs-node" / "configs")
    return next((c for c in candidates if (c / "default.yaml").is_file()), candidates[0])


CONFIG_DIR = _config_dir()
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
CONFIG_ENV = "PACS_NODE_CONFIG"

# AE titles: 1-16 characters of the default character repertoire, no backslash or
# control characters; leading/trailing spaces are not significant (PS3.5 6.2, VR AE).
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_RE.match(stripped):
        raise ValueError(
            f"AE title {value!r} must be 1-16 printable ASCII characters without backslash"
        )
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


OutputSyntax = Literal[
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
]


DicomwebUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]


class CStoreDestination(_Section):
    """A DICOM peer that receives derived series by C-STORE, written ``AET@host:port``."""

    kind: Literal["dicom"] = "dicom"
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    # Derived series are sent uncompressed unless a lossless syntax is named here (JPEG
    # 2000, JPEG-LS or RLE lossless); a peer that does not accept it gets Explicit VR LE.
    transfer_syntax: OutputSyntax | None = None
    # TLS to this peer: its certificate is checked against tls.ca_file, and the node
    # presents tls.cert_file / tls.key_file.
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> CStoreDestination:
        """Parse ``AET@host:port``; raise ``ValueError`` naming the expected form."""
        match = re.fullmatch(r"([^@]{1,16})@(\[[^\]]+\]|[^:@]+):(\d+)", text.strip())
        if not match:
            raise ValueError(f"destination {text!r} is not of the form AET@host:port")
        host = match.group(2).strip("[]")
        return cls(ae_title=match.group(1), host=host, port=int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 B.1, BCP 195): a second Storage SCP port that speaks only TLS, and
    the node's certificate for outgoing TLS associations."""

    port: Port | None = None  # None: no TLS port
    cert_file: Path | None = None  # PEM certificate of the node (chain allowed)
    key_file: Path | None = None  # its PEM private key
    # PEM CA bundle: set, callers to the TLS port must present a certificate it signed;
    # also the CAs trusted for destinations reached over TLS.
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if self.port is not None and (self.cert_file is None or self.key_file is None):
            raise ValueError("tls.port needs tls.cert_file and tls.key_file")
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name} {path} does not exist")
        return self


class ScpSettings(_Section):
    """Storage SCP tuning."""

    bind_address: str = "0.0.0.0"
    max_pdu_bytes: int = Field(default=0, ge=0)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    maximum_associations: int = Field(default=16, ge=1)


class SendSettings(_Section):
    """C-STORE sending of derived series."""

    connect_timeout_s: float = Field(default=10.0, gt=0)
    dimse_timeout_s: float = Field(default=120.0, gt=0)
    acse_timeout_s: float = Field(default=30.0, gt=0)


class DerivedSettings(_Section):
    """How derived series are labelled."""

    series_description_template: str = "{source} [{preset}]"
    series_number_offset: int = Field(default=1000, ge=1, le=100000)
    manufacturer: str = "PACS Enhancement Node"
    equipment_model_name: str = "pacs-node"


class ModelSettings(_Section):
    """Where presets and weights come from and how the inference engine runs."""

    presets_file: Path | None = None  # None: configs/presets.yaml
    weights_dir: Path | None = None  # searched before the shipped models/weights
    strength: Literal["low", "medium", "high"] | None = None  # None: each preset's own
    batch_size: int = Field(default=8, ge=1)
    max_batch_pixels: int = Field(default=0, ge=0)
    tile_size: int = Field(default=512, ge=16)
    tile_overlap: int = Field(default=32, ge=0)
    amp: bool = True
    compile: bool = False
    # Presets marked experimental (not shown to beat the classical baseline on real data)
    # run only when this is true; otherwise start-up and jobs refuse them with the reason.
    allow_experimental: bool = False

    @property
    def presets_path(self) -> Path:
        """The presets file in use."""
        return self.presets_file or CONFIG_DIR / "presets.yaml"


class WorkerSettings(_Section):
    """Celery worker behaviour."""

    # None: start a worker beside ``serve`` exactly when the broker is the embedded SQLite one.
    embedded: bool | None = None
    pool: Literal["solo", "prefork", "threads"] = "solo"
    concurrency: int = Field(default=1, ge=1)
    queue: str = Field(default="pacs_node", pattern=r"^[A-Za-z0-9_.-]+$")
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_s: float = Field(default=10.0, ge=0)
    # A worker on another host sets the node's HTTP address: it then fetches inputs by
    # WADO-RS instead of reading the node's data directory (none is shared).
    node_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    # Such a worker uploads each derived series back to the node, with a token of role
    # ``worker`` (`pacs-node tokens create NAME --role worker`); a secret, so set it only
    # in the environment: PACS_NODE_WORKER__NODE_TOKEN.
    node_token: SecretStr | None = None
    # A running job is leased to its worker, which renews the lease with its heartbeat
    # (every 10 s); the node takes back a job whose lease expired (worker killed or hung)
    # and queues it again, or fails it once max_attempts are used.
    lease_s: float = Field(default=60.0, ge=5)
    # A QUEUED job no worker took for this long is published again (a lost broker message).
    requeue_after_s: float = Field(default=600.0, gt=0)
    # A job's time limit: base + per slice x instances; past it the task ends FAILED
    # (time_limit), and 5 minutes later its lease is let go even if the task is stuck.
    time_limit_base_s: float = Field(default=600.0, gt=0)
    time_limit_per_slice_s: float = Field(default=20.0, ge=0)

    @model_validator(mode="after")
    def _token_for_the_node(self) -> WorkerSettings:
        if self.node_url and self.node_token is None:
            raise ValueError(
                "worker.node_url needs worker.node_token (PACS_NODE_WORKER__NODE_TOKEN), a "
                "token of role worker, to upload derived series back to the node"
            )
        return self


class DicomwebSettings(_Section):
    """Who may use the DICOMweb routes."""

    # True opens STOW-RS, QIDO-RS and WADO-RS to anyone who reaches the HTTP port, without
    # a token (a trusted network only; the node logs a warning at start).
    allow_anonymous: bool = False


class RetentionSettings(_Section):
    """How long data is kept, and the disk watermark (None: kept forever)."""

    derived_days: float | None = Field(default=None, gt=0)
    received_days: float | None = Field(default=None, gt=0)
    jobs_days: float | None = Field(default=None, gt=0)
    disk_watermark_percent: float = Field(default=90.0, gt=0, le=100)
    disk_target_percent: float = Field(default=80.0, gt=0, le=100)
    interval_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _target_below_watermark(self) -> RetentionSettings:
        if self.disk_target_percent >= self.disk_watermark_percent:
            raise ValueError("disk_target_percent must be below disk_watermark_percent")
        return self


class AdmissionSettings(_Section):
    """Disk admission: instances are refused while the data directory's disk is past the
    watermark (C-STORE 0xA700, STOW-RS 507)."""

    max_used_percent: float = Field(default=90.0, gt=0, le=100)
    min_free_gib: float = Field(default=5.0, ge=0)


Limit = Annotated[float, Field(gt=0)] | None
FailurePolicy = Literal["send_original", "hold", "fail"]


class QALimits(_Section):
    """The limit of each QA check (pacs_node/qa.py); null measures without judging."""

    # Mean of output - input in large uniform regions: HU for CT, noise σ otherwise.
    mean_shift_hu: Limit = 5.0
    mean_shift_sigma: Limit = 0.5
    # σ of the residual in flat regions over the series' estimated noise σ.
    residual_noise_ratio: Limit = 1.5
    # Correlation of the residual's magnitude with the source's edges.
    edge_correlation: Limit = 0.5
    # How far the output leaves the input's value range: HU for CT, noise σ otherwise.
    range_excess_hu: Limit = 20.0
    range_excess_sigma: Limit = 1.0
    # A stochastic model (diffusion): the 99th percentile over the body of the per-pixel
    # spread (σ) across samples drawn with other seeds: HU for CT, noise σ otherwise.
    sample_spread_hu: Limit = 10.0
    sample_spread_sigma: Limit = 0.5
    # The noise σ divided by is at least this (CT, HU) or this fraction of the input's
    # 2-98 % range (other modalities), so a noiseless input is not a failure.
    noise_floor_hu: float = Field(default=2.0, gt=0)
    noise_floor_fraction: float = Field(default=0.002, gt=0)

    def with_overrides(self, overrides: dict[str, float | None]) -> QALimits:
        """These limits with a preset's ``qa`` overrides (validated like the settings)."""
        return QALimits.model_validate({**self.model_dump(), **overrides})


class QASettings(_Section):
    """The QA gate between the model and the send, run by the worker on every job."""

    enabled: bool = True
    # What a job whose output fails a check does, unless its routing rule says otherwise:
    # send_original (forward the source untouched instead), hold (nothing sent until an
    # admin releases or rejects it) or fail (FAILED with the checks that failed).
    failure_policy: FailurePolicy = "fail"
    # Slices the statistical checks measure (evenly spaced); every voxel is checked for
    # NaN / Inf and range.
    max_slices: int = Field(default=16, ge=1)
    # Extra samples a stochastic (diffusion) preset draws, with other seeds, for the
    # centre slice of a series (0: its spread is not measured).
    diffusion_samples: int = Field(default=2, ge=0)
    limits: QALimits = QALimits()


class Settings(BaseSettings):
    """Every setting of the node; see ``configs/default.yaml`` for the documented defaults."""

    model_config = SettingsConfigDict(
        env_prefix="PACS_NODE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    ae_title: AETitle = "ENHANCE"
    port: Port = 11112
    http_host: str = "127.0.0.1"
    http_port: Port = 8000
    data_dir: Path = Path("./var")
    database_url: str | None = None
    broker_url: str | None = None
    # Where derived series go with the default routing: AET@host:port (C-STORE) or a
    # DICOMweb root http(s)://server/dicom-web (STOW-RS), as in a routing file.
    destination: CStoreDestination | DicomwebUrl | None = None
    # Routing rules, AE titles per pipeline and admission control (configs/routing.example.yaml);
    # None: one pipeline on ae_title running ``preset`` to ``destination``.
    routing_file: Path | None = None
    series_timeout_s: float = Field(default=10.0, gt=0)
    monitor_interval_s: float = Field(default=1.0, gt=0)
    preset: str = Field(default="ct-denoise", min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    scp: ScpSettings = ScpSettings()
    send: SendSettings = SendSettings()
    derived: DerivedSettings = DerivedSettings()
    models: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    retention: RetentionSettings = RetentionSettings()
    admission: AdmissionSettings = AdmissionSettings()
    dicomweb: DicomwebSettings = DicomwebSettings()
    tls: TlsSettings = TlsSettings()
    qa: QASettings = QASettings()

    @field_validator("destination", mode="before")
    @classmethod
    def _parse_destination(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if re.match(r"https?://", text):
                return text
            try:
                return CStoreDestination.parse(text)
            except ValueError as exc:
                raise ValueError(f"{exc}, nor a DICOMweb URL http(s)://server/dicom-web") from exc
        return value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Absolute, so that a worker started from another directory sees the same files.
        return value.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """The job database URL (default: SQLite in the data directory)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"

    @property
    def celery_broker_url(self) -> str:
        """The Celery broker URL (default: kombu's SQLAlchemy transport on SQLite)."""
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"

    @property
    def embedded_worker(self) -> bool:
        """Whether ``serve`` starts a worker process beside itself."""
        if self.worker.embedded is not None:
            return self.worker.embedded
        return self.celery_broker_url.startswith("sqla+sqlite")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        overlay = os.environ.get(CONFIG_ENV)
        if overlay:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(overlay)))
        sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=DEFAULT_CONFIG))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once, in an entry point.

    Parameters
    ----------
    config_file
        Optional YAML overlay (same keys as ``configs/default.yaml``); it is also
        exported as ``PACS_NODE_CONFIG`` so that child processes read it too.
    **overrides
        Explicit values that beat every other source.

    Raises
    ------
    ConfigError
        With every invalid or unknown key listed, so a typo fails at start-up.
    """
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"configuration file {config_file} does not exist")
        os.environ[CONFIG_ENV] = str(config_file.resolve())
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
