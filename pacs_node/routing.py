"""Routing: AE titles per pipeline, admission control and rules that choose preset and
destinations (first match wins), validated at start-up like the rest of the settings.

Without a routing file the node has one pipeline, its own AE title, whose default rule
runs ``preset`` and sends to ``destination`` (the behaviour of the plain settings).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.dataset import Dataset

from pacs_node.errors import ConfigError
from pacs_node.settings import AETitle, CStoreDestination, FailurePolicy, Port, Settings

Strength = Literal["low", "medium", "high"]
SENDER = "sender"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StowDestination(_Model):
    """A DICOMweb server that receives derived series by STOW-RS.

    Credentials never sit in the file: ``token_env`` names an environment variable holding a
    bearer token, or ``username_env``/``password_env`` name those of HTTP basic auth.
    """

    kind: Literal["dicomweb"] = "dicomweb"
    url: str = Field(pattern=r"^https?://\S+$")
    token_env: str | None = None
    username_env: str | None = None
    password_env: str | None = None

    def __str__(self) -> str:
        return self.url.rstrip("/")


class SenderDestination(_Model):
    """Return to sender: the calling AE title, looked up in the known peers."""

    kind: Literal["sender"] = "sender"

    def __str__(self) -> str:
        return SENDER


Destination = Annotated[
    CStoreDestination | StowDestination | SenderDestination, Field(discriminator="kind")
]


def parse_destination(value: Any) -> Any:
    """``AET@host:port``, ``http(s)://…`` or ``sender`` as a destination mapping."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == SENDER:
        return {"kind": "sender"}
    if re.match(r"^https?://", text):
        return {"kind": "dicomweb", "url": text}
    parsed = CStoreDestination.parse(text)
    return parsed.model_dump()


class Match(_Model):
    """Conditions on the series (from its first instance) and the association; all must hold.

    Strings are exact (Modality, BodyPartExamined, AE titles: case-insensitive); lists mean
    any of; ``series_description`` and ``manufacturer`` are regular expressions searched
    case-insensitively; ranges are inclusive ``[min, max]``.
    """

    called_ae_title: list[str] | None = None
    calling_ae_title: list[str] | None = None
    modality: list[str] | None = None
    body_part_examined: list[str] | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    slice_thickness_mm: tuple[float, float] | None = None
    image_size: tuple[int, int] | None = None  # both Rows and Columns within [min, max]

    @field_validator(
        "called_ae_title", "calling_ae_title", "modality", "body_part_examined", mode="before"
    )
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("series_description", "manufacturer")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @property
    def unconditional(self) -> bool:
        """Whether the rule matches everything (a default rule)."""
        return all(getattr(self, name) is None for name in type(self).model_fields)

    def failed_condition(self, ds: Dataset, calling: str | None, called: str | None) -> str | None:
        """The first condition ``ds`` does not meet, in words, or None when all hold."""

        def one_of(label: str, actual: str | None, allowed: list[str] | None) -> str | None:
            if allowed is None:
                return None
            if actual is not None and actual.strip().upper() in {a.upper() for a in allowed}:
                return None
            return f"{label} {actual!r} not in {allowed}"

        def regex(label: str, actual: str, pattern: str | None) -> str | None:
            if pattern is None or re.search(pattern, actual, re.IGNORECASE):
                return None
            return f"{label} {actual!r} does not match /{pattern}/"

        def within(label: str, actual: Any, bounds: tuple[float, float] | None) -> str | None:
            if bounds is None:
                return None
            try:
                value = float(actual)
            except (TypeError, ValueError):
                return f"{label} is missing"
            if bounds[0] <= value <= bounds[1]:
                return None
            return f"{label} {value:g} outside [{bounds[0]:g}, {bounds[1]:g}]"

        text = str
        checks = [
            one_of("called AE", called, self.called_ae_title),
            one_of("calling AE", calling, self.calling_ae_title),
            one_of("Modality", text(ds.get("Modality", "") or ""), self.modality),
            one_of(
                "BodyPartExamined",
                text(ds.get("BodyPartExamined", "") or ""),
                self.body_part_examined,
            ),
            regex(
                "SeriesDescription",
                text(ds.get("SeriesDescription", "") or ""),
                self.series_description,
            ),
            regex("Manufacturer", text(ds.get("Manufacturer", "") or ""), self.manufacturer),
            within("SliceThickness", ds.get("SliceThickness"), self.slice_thickness_mm),
            within("Rows", ds.get("Rows"), self.image_size),
            within("Columns", ds.get("Columns"), self.image_size),
        ]
        return next((c for c in checks if c is not None), None)


class Rule(_Model):
    """One routing rule; ``preset: null`` records matching series as SKIPPED."""

    name: str = Field(min_length=1, max_length=64)
    match: Match = Match()
    preset: str | None
    strength: Strength | None = None
    destinations: list[Destination] = []
    # Send series that are SKIPPED (localizers, dose reports, other modalities, preset
    # null) untouched to the destinations, so the PACS still gets the whole study.
    forward_skipped: bool = False
    # What a job whose output fails the QA gate does (send_original | hold | fail); None:
    # the worker's qa.failure_policy.
    qa_failure: FailurePolicy | None = None

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        return [parse_destination(v) for v in value] if isinstance(value, list) else value


class Pipeline(_Model):
    """One AE title on the node's DICOM port with its admission control and rules."""

    ae_title: AETitle
    rules: list[Rule] = Field(min_length=1)
    # Admission: calling AE titles allowed (empty: any); with ``check_host`` a caller listed
    # in ``peers`` with a host must connect from that host.
    allowed_callers: list[AETitle] = []
    check_host: bool = False
    # Storage SOP class UIDs accepted on this AE (empty: every storage class).
    sop_classes: list[str] = []

    @model_validator(mode="after")
    def _default_rule_last(self) -> Pipeline:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {self.ae_title}: rule names must be unique: {names}")
        defaults = [i for i, r in enumerate(self.rules) if r.match.unconditional]
        if not defaults:
            raise ValueError(
                f"pipeline {self.ae_title}: needs a default rule (one without 'match'), last"
            )
        if defaults[0] != len(self.rules) - 1:
            unreachable = [r.name for r in self.rules[defaults[0] + 1 :]]
            raise ValueError(
                f"pipeline {self.ae_title}: rules {unreachable} come after the default rule "
                f"{self.rules[defaults[0]].name!r} and can never match"
            )
        return self


class Peer(_Model):
    """A known DICOM peer: where it may call from and where "sender" sends to."""

    ae_title: AETitle
    host: str | None = None
    port: Port | None = None


class RoutingConfig(_Model):
    """The whole routing file."""

    peers: list[Peer] = []
    pipelines: list[Pipeline] = Field(min_length=1)
    # The pipeline whose rules apply to STOW-RS uploads (default: the first one).
    dicomweb_pipeline: str | None = None

    @model_validator(mode="after")
    def _unique(self) -> RoutingConfig:
        titles = [p.ae_title for p in self.pipelines]
        if len(set(titles)) != len(titles):
            raise ValueError(f"pipeline AE titles must be unique: {titles}")
        peers = [p.ae_title for p in self.peers]
        if len(set(peers)) != len(peers):
            raise ValueError(f"peer AE titles must be unique: {peers}")
        if self.dicomweb_pipeline is not None and self.dicomweb_pipeline not in titles:
            raise ValueError(f"dicomweb_pipeline {self.dicomweb_pipeline!r} is not a pipeline")
        return self


@dataclass(frozen=True)
class Decision:
    """What a rule chose for a series, and why (for ``rules test`` and the audit trail)."""

    pipeline: str
    rule: str
    preset: str | None
    strength: str | None
    destinations: list[CStoreDestination | StowDestination | SenderDestination]
    reasons: list[str]  # why each earlier rule did not match
    forward_skipped: bool = False
    qa_failure: str | None = None


class Routing:
    """The validated routing of one node."""

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self.pipelines = {p.ae_title: p for p in config.pipelines}
        self.peers = {p.ae_title: p for p in config.peers}

    @property
    def ae_titles(self) -> list[str]:
        """The AE titles the node answers to."""
        return list(self.pipelines)

    @property
    def dicomweb_pipeline(self) -> Pipeline:
        """The pipeline whose rules route STOW-RS uploads."""
        name = self.config.dicomweb_pipeline or self.config.pipelines[0].ae_title
        return self.pipelines[name]

    def admission_problem(
        self, called: str, calling: str, host: str | None
    ) -> tuple[int, str] | None:
        """Why an association must be rejected: (A-ASSOCIATE-RJ diagnostic, reason) or None.

        Diagnostics (PS3.8 9.3.4): 3 calling AE title not recognised, 7 called AE title not
        recognised.
        """
        pipeline = self.pipelines.get(called.strip())
        if pipeline is None:
            return 7, f"called AE title {called!r} is not one of {self.ae_titles}"
        caller = calling.strip()
        if pipeline.allowed_callers and caller not in pipeline.allowed_callers:
            return 3, f"calling AE title {caller!r} may not send to {called}"
        if pipeline.check_host:
            peer = self.peers.get(caller)
            if peer is None:
                return 3, f"calling AE title {caller!r} is not a known peer"
            if peer.host is not None and host is not None and peer.host != host:
                return 3, f"calling AE title {caller!r} connected from {host}, not {peer.host}"
        return None

    def decide(self, ds: Dataset, calling: str | None, called: str | None) -> Decision:
        """The first rule of the called pipeline (STOW-RS: ``dicomweb_pipeline``) that
        matches ``ds``; the default rule when no other does."""
        pipeline = self.pipelines.get((called or "").strip()) or self.dicomweb_pipeline
        reasons: list[str] = []
        for rule in pipeline.rules:
            failed = rule.match.failed_condition(ds, calling, called)
            if failed is None:
                return Decision(
                    pipeline.ae_title,
                    rule.name,
                    rule.preset,
                    rule.strength,
                    list(rule.destinations),
                    reasons,
                    rule.forward_skipped,
                    rule.qa_failure,
                )
            reasons.append(f"{rule.name}: {failed}")
        raise AssertionError("a pipeline always ends with a default rule")

    def sender_address(self, calling: str | None) -> CStoreDestination:
        """Where "return to sender" sends for ``calling``.

        Raises
        ------
        ValueError
            When the caller is not a known peer with a host and port.
        """
        peer = self.peers.get((calling or "").strip())
        if peer is None or peer.host is None or peer.port is None:
            raise ValueError(
                f"return to sender: calling AE {calling!r} is not a known peer with host and port"
            )
        return CStoreDestination(ae_title=peer.ae_title, host=peer.host, port=peer.port)

    def resolved_destinations(
        self, decision: Decision, calling: str | None
    ) -> list[dict[str, Any]]:
        """The decision's destinations as stored on the job, "sender" replaced by the
        caller's address; an unknown caller becomes ``{"kind": "unresolved", "reason": …}``,
        which fails the job with that reason when it is sent."""
        out: list[dict[str, Any]] = []
        for destination in decision.destinations:
            if isinstance(destination, SenderDestination):
                try:
                    out.append(self.sender_address(calling).model_dump())
                except ValueError as exc:
                    out.append({"kind": "unresolved", "reason": str(exc)})
            else:
                out.append(destination.model_dump())
        return out

    @classmethod
    def simple(cls, ae_title: str, preset: str | None, destinations: Sequence[str] = ()) -> Routing:
        """One pipeline with one default rule (for tools and tests)."""
        rule = Rule.model_validate(
            {"name": "default", "preset": preset, "destinations": list(destinations)}
        )
        return cls(RoutingConfig(pipelines=[Pipeline(ae_title=ae_title, rules=[rule])]))

    def preset_names(self) -> set[str]:
        """Every preset a rule names."""
        return {r.preset for p in self.config.pipelines for r in p.rules if r.preset is not None}

    def check_presets(self, known: Sequence[str]) -> None:
        """Every preset a rule names exists (ConfigError naming the rule otherwise)."""
        for pipeline in self.config.pipelines:
            for rule in pipeline.rules:
                if rule.preset is not None and rule.preset not in known:
                    raise ConfigError(
                        f"routing: pipeline {pipeline.ae_title} rule {rule.name!r} uses unknown "
                        f"preset {rule.preset!r}; available: {', '.join(sorted(known))}"
                    )


def default_routing(settings: Settings) -> Routing:
    """One pipeline on ``settings.ae_title``: ``preset`` to ``destination``."""
    destinations = [str(settings.destination)] if settings.destination else []
    return Routing.simple(settings.ae_title, settings.preset, destinations)


def load_routing(settings: Settings) -> Routing:
    """The routing file named by ``settings.routing_file``, or the default routing.

    Raises
    ------
    ConfigError
        The file is missing or unreadable, or any rule is invalid (every problem listed).
    """
    path: Path | None = settings.routing_file
    if path is None:
        return default_routing(settings)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read routing file {path}: {exc}") from exc
    try:
        return Routing(RoutingConfig.model_validate(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid routing file {path}: {problems}") from exc
