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
    transfer_syntax: OutputSyntax | None = Field(
        default=None,
        description="derived series are sent uncompressed unless a lossless syntax is named "
        "(JPEG 2000, JPEG-LS or RLE lossless); a peer that does not accept it gets "
        "Explicit VR Little Endian",
    )
    tls: bool = Field(
        default=False,
        description="TLS to this peer: its certificate is checked against `tls.ca_file`, and "
        "the node presents `tls.cert_file` / `tls.key_file`",
    )

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

    port: Port | None = Field(
        default=None,
        description="a second DICOM port that speaks only TLS (TLS 1.2 or later, PS3.15 B.1 / "
        "BCP 195), with the same AE titles, routing and association limit as the plain "
        "port; null: no TLS port",
    )
    cert_file: Path | None = Field(
        default=None,
        description="the node's PEM certificate (chain allowed): presented on the TLS port and "
        "to destinations reached over TLS",
    )
    key_file: Path | None = Field(default=None, description="the private key of `tls.cert_file`")
    ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle: callers of the TLS port must present a certificate it "
        "signed (else they are refused during the handshake), and destinations with "
        "`tls: true` must present one too (their host name checked)",
    )

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

    bind_address: str = Field(
        default="0.0.0.0", description="the interface the DICOM port(s) listen on"
    )
    max_pdu_bytes: int = Field(
        default=0,
        ge=0,
        description="the largest PDU the SCP receives, announced at association (0: "
        "unlimited); senders split larger instances",
    )
    acse_timeout_s: float = Field(default=30.0, gt=0, description="association set-up and release")
    dimse_timeout_s: float = Field(default=60.0, gt=0, description="one DIMSE message")
    network_timeout_s: float = Field(
        default=60.0, gt=0, description="an association silent this long is closed by the SCP"
    )
    maximum_associations: int = Field(
        default=16,
        ge=1,
        description="associations at once, per receiving process; one more is rejected "
        "(A-ASSOCIATE-RJ, local limit exceeded) until one ends",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes accepting associations on the DICOM port(s): the node and "
        "processes - 1 receiver children, sharing the port (SO_REUSEPORT, Linux), so that "
        "parallel associations use several cores",
    )

    @model_validator(mode="after")
    def _processes_need_linux(self) -> ScpSettings:
        if self.processes > 1 and not sys.platform.startswith("linux"):
            raise ValueError("scp.processes above 1 needs Linux (SO_REUSEPORT spreading)")
        return self


class SendSettings(_Section):
    """C-STORE sending of derived series."""

    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="TCP connection to a C-STORE destination"
    )
    dimse_timeout_s: float = Field(
        default=120.0, gt=0, description="one C-STORE response from the destination"
    )
    acse_timeout_s: float = Field(
        default=30.0, gt=0, description="association set-up with the destination"
    )
    associations: int = Field(
        default=1,
        ge=1,
        le=8,
        description="associations opened at once to a C-STORE destination, each sending its "
        "share of a series (PACS that accept parallel associations store faster; a PACS "
        "sees up to worker processes × this many; `dimse_timeout_s` holds per association)",
    )


class DerivedSettings(_Section):
    """How derived series are labelled."""

    series_description_template: str = Field(
        default="{source} [{preset}]",
        description="Series Description of a derived series; placeholders `{source}` (the "
        "source's description), `{preset}`, `{model}`, `{version}`; cut to 64 characters",
    )
    series_number_offset: int = Field(
        default=1000,
        ge=1,
        le=100000,
        description="derived Series Number = the source's + this offset, bumped past "
        "numbers in use in the study",
    )
    manufacturer: str = Field(
        default="PACS Enhancement Node",
        description="Manufacturer in the Contributing Equipment of derived series; series "
        "carrying it are never enhanced again",
    )
    equipment_model_name: str = Field(
        default="pacs-node",
        description="Manufacturer's Model Name in the same Contributing Equipment item",
    )
    uncertainty_samples: int = Field(
        default=0,
        ge=0,
        le=16,
        description="a stochastic preset (the diffusion sampler) also sends an uncertainty "
        "map: a secondary series, per pixel the spread (σ, HU) across this many + 1 samples "
        "of its full sampler drawn with other seeds (costs up to this many + 1 sampler runs "
        "per slice; 0: no map; single-frame series only)",
    )


class ModelSettings(_Section):
    """Where presets and weights come from and how the inference engine runs."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "amp" in data:
            raise ValueError(
                "models.amp was replaced by models.precision (fp32, tf32 or bf16; "
                "amp true was bf16): set that instead"
            )
        return data

    presets_file: Path | None = Field(
        default=None,
        description="the preset definitions; null: the shipped `configs/presets.yaml`",
    )
    weights_dir: Path | None = Field(
        default=None,
        description="an extra folder of model cards, searched before the shipped `models/weights`",
    )
    strength: Literal["low", "medium", "high"] | None = Field(
        default=None, description="the strength of every preset; null: each preset's own"
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        description="slices per forward pass (halved on GPU out-of-memory)",
    )
    max_batch_pixels: int = Field(
        default=0,
        ge=0,
        description="memory budget: input pixels per forward pass (0: unbounded)",
    )
    tile_size: int = Field(
        default=512, ge=16, description="slices larger than this are processed in tiles"
    )
    tile_overlap: int = Field(
        default=32, ge=0, description="overlap of neighbouring tiles, discarded from each"
    )
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        default="fp32",
        description="the networks' arithmetic on a GPU (a CPU always computes in float32): "
        "`fp32` gives the CPU's output to 0.005 HU; `tf32` (TensorFloat-32 convolutions) and "
        "`bf16` (autocast) are up to 20 % faster per volume and change output pixels (H200, "
        "default denoiser: p99 0.1 and 4.9 HU, largest 1.7 and 26 HU; "
        "[benchmarks.md](benchmarks.md#gpu-nvidia-h200))",
    )
    compile: bool = Field(default=False, description="run the networks through `torch.compile`")
    allow_experimental: bool = Field(
        default=False,
        description="presets marked `experimental` in the presets file (not shown to help on "
        "real data) run only when true; otherwise `serve`, workers and `pacs-node enhance` "
        "refuse them with the reason, and `pacs-node models list` marks them",
    )

    @property
    def presets_path(self) -> Path:
        """The presets file in use."""
        return self.presets_file or CONFIG_DIR / "presets.yaml"


class WorkerSettings(_Section):
    """Celery worker behaviour."""

    embedded: bool | None = Field(
        default=None,
        description="start a worker process beside `serve`; null: exactly when the broker is "
        "the embedded SQLite one",
    )
    pool: Literal["solo", "prefork", "threads"] = Field(
        default="solo", description="the Celery pool of `pacs-node worker`"
    )
    concurrency: int = Field(default=1, ge=1, description="jobs one worker runs at once")
    pipelined: bool = Field(
        default=False,
        description="build and write a network preset's derived instances on a second thread "
        "while the model computes later slices (no gain measured on 2 CPU cores: "
        "docs/benchmarks.md)",
    )
    queue: str = Field(
        default="pacs_node",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the Celery queue, shared by the node and its workers",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="attempts of a job before it is FAILED (the dead letter; `pacs-node jobs "
        "retry` starts it again); a failed send goes back to the queue with its next "
        "attempt scheduled in the database, and only the instances not yet stored are "
        "sent again",
    )
    retry_backoff_s: float = Field(
        default=10.0,
        ge=0,
        description="delay before attempt n+1: `retry_backoff_s × 2^(n-1)` ±25 % jitter "
        "(kept in the database, so it survives restarts of the node, workers and broker)",
    )
    node_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="a worker on another host: the node's `http://host:port`; inputs then "
        "come by WADO-RS and each derived instance is uploaded back to the node (no shared "
        "data directory)",
    )
    node_token: SecretStr | None = Field(
        default=None,
        description="with `worker.node_url` (required then): a token of role `worker` "
        "(`pacs-node tokens create NAME --role worker`); a secret, set only in the "
        "environment",
    )
    lease_s: float = Field(
        default=60.0,
        ge=5,
        description="a running job is leased to its worker, which renews the lease every 10 s "
        "with its heartbeat; the node takes back a job whose lease expired (worker killed "
        "or hung) and queues it again, or marks it FAILED (`worker_lost`) once "
        "`worker.max_attempts` are used",
    )
    requeue_after_s: float = Field(
        default=600.0,
        gt=0,
        description="a QUEUED job no worker took for this long is published again (its broker "
        "message may be lost); a duplicate message is harmless, only one claim succeeds",
    )
    time_limit_base_s: float = Field(
        default=600.0,
        gt=0,
        description="a job's time limit is this + `time_limit_per_slice_s` × instances; past "
        "it the job is FAILED (`time_limit`); a task stuck 5 minutes longer ends its worker "
        "process (exit 70: run workers under a supervisor) and the node takes the job back",
    )
    time_limit_per_slice_s: float = Field(
        default=20.0, ge=0, description="the per-instance part of a job's time limit"
    )

    @model_validator(mode="after")
    def _token_for_the_node(self) -> WorkerSettings:
        if self.node_url and self.node_token is None:
            raise ValueError(
                "worker.node_url needs worker.node_token (PACS_NODE_WORKER__NODE_TOKEN), a "
                "token of role worker, to upload derived series back to the node"
            )
        return self


class DicomwebSettings(_Section):
    """Who may use the DICOMweb routes, and when a series sent by STOW-RS is complete."""

    allow_anonymous: bool = Field(
        default=False,
        description="true opens STOW-RS, QIDO-RS and WADO-RS to callers without a token "
        "(trusted networks only; a warning is logged at start); otherwise each needs a "
        "token of a role that allows it",
    )
    complete_after_s: float = Field(
        default=3.0,
        ge=0,
        description="the end of a STOW-RS request declares its series complete: the series' "
        "job closes once no instance of it arrived for this long (instead of "
        "`series_timeout_s`). Longer than the longest pause a client makes between the "
        "requests of one series, or the series is processed in parts",
    )


class RetentionSettings(_Section):
    """How long data is kept, and the disk watermark (null: kept forever)."""

    derived_days: float | None = Field(
        default=None,
        gt=0,
        description="derived files of finished jobs older than this are deleted (null: kept)",
    )
    received_days: float | None = Field(
        default=None,
        gt=0,
        description="received files of finished jobs older than this are deleted (null: kept)",
    )
    jobs_days: float | None = Field(
        default=None,
        gt=0,
        description="finished jobs older than this are deleted with their files (null: kept); "
        "unfinished jobs' data never is",
    )
    disk_watermark_percent: float = Field(
        default=90.0,
        gt=0,
        le=100,
        description="above this disk usage the oldest finished jobs are deleted until usage "
        "reaches `disk_target_percent`",
    )
    disk_target_percent: float = Field(
        default=80.0, gt=0, le=100, description="where the watermark clean-up stops"
    )
    interval_s: float = Field(
        default=3600.0, gt=0, description="period of the clean-up inside `serve`"
    )

    @model_validator(mode="after")
    def _target_below_watermark(self) -> RetentionSettings:
        if self.disk_target_percent >= self.disk_watermark_percent:
            raise ValueError("disk_target_percent must be below disk_watermark_percent")
        return self


class AdmissionSettings(_Section):
    """Disk admission: instances are refused while the data directory's disk is past the
    watermark (C-STORE 0xA700, STOW-RS 507)."""

    max_used_percent: float = Field(
        default=90.0,
        gt=0,
        le=100,
        description="while the data directory's disk is fuller than this, new instances are "
        "refused (C-STORE 0xA700 with the reason, STOW-RS 507 before the body is read); "
        "accepted again as soon as space returns",
    )
    min_free_gib: float = Field(
        default=5.0, ge=0, description="likewise while less than this is free"
    )


Limit = Annotated[float, Field(gt=0)] | None
FailurePolicy = Literal["send_original", "hold", "fail"]


class QALimits(_Section):
    """The limit of each QA check (pacs_node/qa.py); null measures without judging."""

    mean_shift_hu: Limit = Field(
        default=5.0,
        description="CT: largest |mean of output − input| (HU) in large uniform regions; "
        "null measures without judging (so for every limit here)",
    )
    mean_shift_sigma: Limit = Field(
        default=0.5, description="the same for other modalities, in units of the noise σ"
    )
    residual_noise_ratio: Limit = Field(
        default=1.5,
        description="σ of the residual in flat regions over the series' own noise σ "
        "(estimated blind from the input)",
    )
    edge_correlation: Limit = Field(
        default=0.5,
        description="correlation of the residual's magnitude with the source's edges "
        "(structure removed or invented)",
    )
    range_excess_hu: Limit = Field(
        default=20.0,
        description="CT: how far (HU) the output may leave the input's value range (air at "
        "−1000 HU or below not counted)",
    )
    range_excess_sigma: Limit = Field(
        default=1.0, description="the same for other modalities, in units of the noise σ"
    )
    sample_spread_hu: Limit = Field(
        default=10.0,
        description="a stochastic preset (diffusion): the 99th percentile over the body of "
        "the per-pixel spread across samples drawn with other seeds, HU",
    )
    sample_spread_sigma: Limit = Field(
        default=0.5, description="the same for other modalities, in units of the noise σ"
    )
    noise_floor_hu: float = Field(
        default=2.0,
        gt=0,
        description="CT: the noise σ the ratios divide by is at least this, so a noiseless "
        "input does not fail",
    )
    noise_floor_fraction: float = Field(
        default=0.002,
        gt=0,
        description="other modalities: that floor as a fraction of the input's 2–98 % value range",
    )

    def with_overrides(self, overrides: dict[str, float | None]) -> QALimits:
        """These limits with a preset's ``qa`` overrides (validated like the settings)."""
        return QALimits.model_validate({**self.model_dump(), **overrides})


class QASettings(_Section):
    """The QA gate between the model and the send, run by the worker on every job."""

    enabled: bool = Field(
        default=True,
        description="the QA gate runs on every job in the worker, between the model and the "
        "send; false skips it (figures not measured, nothing gated)",
    )
    failure_policy: FailurePolicy = Field(
        default="fail",
        description="what a job whose output fails a check does, unless its routing rule "
        "sets `qa_failure`: `send_original` (the source forwarded untouched instead; the "
        "job ends SKIPPED), `hold` (nothing sent; HELD until an admin releases or rejects "
        "it) or `fail` (FAILED, `qa_failed`, with the checks that failed)",
    )
    max_slices: int = Field(
        default=16,
        ge=1,
        description="slices (evenly spaced) the statistical checks measure; NaN / Inf and "
        "range are checked on every voxel",
    )
    diffusion_samples: int = Field(
        default=2,
        ge=0,
        description="a stochastic preset draws this many more samples of the series' centre "
        "slice with other seeds for the `sample_spread` check (0: not measured)",
    )
    limits: QALimits = QALimits()


class Settings(BaseSettings):
    """Every setting of the node; see ``configs/default.yaml`` for the documented defaults."""

    model_config = SettingsConfigDict(
        env_prefix="PACS_NODE_",
        env_nested_delimiter="__",
        env_parse_none_str="null",  # PACS_NODE_X=null sets null, as in the YAML files
        extra="forbid",
        validate_default=True,
    )

    ae_title: AETitle = Field(
        default="ENHANCE",
        description="the AE title scanners and PACS send to (1–16 printable characters, no "
        "backslash)",
    )
    port: Port = Field(default=11112, description="the DICOM (DIMSE) port")
    http_host: str = Field(
        default="127.0.0.1",
        description="bind address of the admin API, dashboard and DICOMweb (all with bearer "
        "tokens)",
    )
    http_port: Port = Field(default=8000, description="their port")
    data_dir: Path = Field(
        default=Path("./var"),
        description="received and derived files, the SQLite files and logs; made absolute, "
        "so a worker started elsewhere sees the same files",
        json_schema_extra={"default_text": "./var"},
    )
    database_url: str | None = Field(
        default=None,
        description="the job database, any SQLAlchemy URL (PostgreSQL: "
        "`postgresql+psycopg://user@host/db`); null: SQLite `jobs.sqlite` in `data_dir`",
    )
    broker_url: str | None = Field(
        default=None,
        description="the Celery broker (Redis: `redis://host:6379/0`); null: the embedded "
        "SQLite broker `broker.sqlite` in `data_dir`",
    )
    destination: CStoreDestination | DicomwebUrl | None = Field(
        default=None,
        description="where derived series go without a routing file: `AET@host:port` "
        "(C-STORE) or a DICOMweb root `http(s)://server/dicom-web` (STOW-RS); null: kept "
        "in `data_dir` only",
        json_schema_extra={"type_text": "AET@host:port or URL"},
    )
    routing_file: Path | None = Field(
        default=None,
        description="routing rules, AE titles per pipeline, admission control and several "
        "destinations (`configs/routing.example.yaml`); null: one pipeline on `ae_title` "
        "running `preset` to `destination`",
    )
    series_timeout_s: float = Field(
        default=10.0, gt=0, description="quiet time after which a series is complete"
    )
    monitor_interval_s: float = Field(
        default=1.0, gt=0, description="period of the completion monitor"
    )
    preset: str = Field(
        default="ct-denoise",
        min_length=1,
        description="the enhancement preset of the default pipeline (`pacs-node models list`)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where models run; auto: CUDA when present"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="logging threshold of the node and its workers"
    )
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
