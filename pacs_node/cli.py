"""The ``pacs-node`` command (an entry point): serve, worker, echo, enhance, jobs, models, db,
config."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pacs_node.config_cli import config_app
from pacs_node.errors import ConfigError, EnhancementError
from pacs_node.settings import CStoreDestination, Settings, load_settings

if TYPE_CHECKING:
    from pacs_node.db.repository import JobView

app = typer.Typer(help="PACS Enhancement Node", no_args_is_help=True, add_completion=False)
jobs_app = typer.Typer(help="Inspect enhancement jobs.", no_args_is_help=True)
db_app = typer.Typer(help="Job database maintenance.", no_args_is_help=True)
models_app = typer.Typer(help="Enhancement models and presets.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
rules_app = typer.Typer(help="Routing rules.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (admin, viewer and worker roles).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(models_app, name="models")
app.add_typer(rules_app, name="rules")
app.add_typer(config_app, name="config")
console = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML overlay on configs/default.yaml", exists=True),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _repository(settings: Settings) -> Any:
    from pacs_node.db.migrate import is_current
    from pacs_node.db.repository import JobRepository
    from pacs_node.db.session import make_engine, make_session_factory

    engine = make_engine(settings.db_url)
    if not is_current(engine, settings.db_url):
        console.print("[red]the job database is not migrated:[/red] run `pacs-node db upgrade`")
        raise typer.Exit(2)
    return JobRepository(make_session_factory(engine))


def _json_default(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the node: Storage SCP, series completion, admin API, and an embedded worker."""
    settings = _settings(config)
    _configure_logging(settings.log_level)
    from pacs_node.node import serve as run_node

    try:
        run_node(settings)
    except EnhancementError as exc:
        console.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command(hidden=True)
def receive(config: ConfigOption = None) -> None:
    """A receiver process of `serve` (scp.processes above 1): the Storage SCP alone."""
    settings = _settings(config)
    _configure_logging(settings.log_level)
    from pacs_node.scp.process import receive as run_receiver

    try:
        run_receiver(settings)
    except (EnhancementError, OSError) as exc:  # OSError: the port cannot be bound
        console.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run a Celery worker for this node's queue (same as `celery -A workers.app worker`)."""
    settings = _settings(config)
    from pacs_node.node import worker_command, worker_environment

    command = worker_command(settings, "worker-%h-" + str(os.getpid()))
    os.execve(command[0], command, worker_environment(settings))


@app.command()
def echo(
    peer: Annotated[str, typer.Argument(help="AET@host:port")],
    calling_ae: Annotated[str, typer.Option(help="our AE title")] = "PACSNODE",
    timeout_s: Annotated[float, typer.Option(help="connection timeout")] = 10.0,
) -> None:
    """Send a C-ECHO (DICOM ping) to a peer; exit status 0 on success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    try:
        destination = CStoreDestination.parse(peer)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        console.print(f"[red]association with {destination} failed[/red]")
        raise typer.Exit(1)
    status = assoc.send_c_echo()
    assoc.release()
    code = int(status.Status) if "Status" in status else None
    if code != 0:
        console.print(f"[red]C-ECHO to {destination} failed: status {code}[/red]")
        raise typer.Exit(1)
    console.print(f"C-ECHO to {destination}: success")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = None,
    status: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List jobs, newest first."""
    from pacs_node.db.models import JobStatus

    settings = _settings(config)
    try:
        wanted = JobStatus(status.upper()) if status else None
    except ValueError as exc:
        choices = ", ".join(s.value for s in JobStatus)
        console.print(f"[red]unknown status {status!r}; one of {choices}[/red]")
        raise typer.Exit(2) from exc
    jobs = _repository(settings).list_jobs(status=wanted, limit=limit)
    if as_json:
        typer.echo(json.dumps([asdict(j) for j in jobs], default=_json_default, indent=2))
        return
    table = Table(title=f"Jobs ({len(jobs)})")
    for column in (
        "ID",
        "Status",
        "Preset",
        "Modality",
        "Series",
        "Instances",
        "From",
        "Updated",
        "Error",
    ):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            str(job.id),
            job.status.value,
            job.preset or "-",
            job.modality or "",
            f"{job.series_number or ''} {job.series_description or ''}".strip(),
            str(job.instance_count),
            job.calling_ae_title or "",
            _time(job.updated_at),
            (job.error_message or "")[:60],
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="job ID")],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show one job with its event trail and send results."""
    settings = _settings(config)
    repository = _repository(settings)
    job = repository.get_job(job_id)
    if job is None:
        tombstone = repository.tombstone(job_id)
        if tombstone is None:
            console.print(f"[red]job {job_id} not found[/red]")
            raise typer.Exit(1)
        if as_json:
            typer.echo(json.dumps({"deleted": tombstone}, default=_json_default, indent=2))
            return
        deleted, by, was = (
            _time(tombstone["deleted_at"]),
            tombstone["deleted_by"],
            tombstone["status"],
        )
        console.print(f"[bold]Job {job_id}[/bold]  deleted {deleted} by {by} (was {was}); trail:")
        for event in tombstone["events"]:
            console.print(f"  {event['at']}  {event['status']:<9} {event['message']}")
        return
    if as_json:
        typer.echo(json.dumps(asdict(job), default=_json_default, indent=2))
        return
    console.print(f"[bold]Job {job.id}[/bold]  {job.status.value}  preset {job.preset}")
    for label, value in (
        ("Study", job.study_instance_uid),
        ("Series", job.series_instance_uid),
        ("Description", f"{job.series_number or ''} {job.series_description or ''}".strip()),
        ("Modality", job.modality),
        ("Instances", job.instance_count),
        ("From", f"{job.calling_ae_title} -> {job.called_ae_title}"),
        ("Rule", f"{job.rule or '-'} (strength {job.strength or 'preset default'})"),
        ("Destinations", ", ".join(_destination_text(d) for d in job.destinations)),
        ("Attempts", job.attempts),
        ("Derived series", job.output_series_instance_uid),
        ("Uncertainty map", _secondary_series(job)),
        ("Error", f"{job.error_code}: {job.error_message}" if job.error_message else None),
    ):
        console.print(f"  {label:<15} {value if value not in (None, '') else '-'}")
    if job.qa:
        _print_qa(job.qa)
    events = Table(title="Events")
    for column in ("Time", "Status", "Message"):
        events.add_column(column)
    for event in job.events:
        events.add_row(_time(event.at), event.status.value, event.message)
    console.print(events)
    if job.outputs:
        from pacs_node.scu import acknowledged

        sent_ok = sum(1 for o in job.outputs if acknowledged(o.send_status))
        maps = len(job.secondary_outputs)
        shown = f"{len(job.outputs) - maps} derived instances" + (
            f" and {maps} of the uncertainty map" if maps else ""
        )
        console.print(f"  Outputs: {shown}, {sent_ok} acknowledged")


def _secondary_series(job: JobView) -> str | None:
    """The series of a job's outputs that is not its derived series (the uncertainty map)."""
    others = {o.series_instance_uid for o in job.secondary_outputs}
    return ", ".join(sorted(uid for uid in others if uid)) or None


def _print_qa(qa: dict[str, Any]) -> None:
    """The QA gate's verdict and figures of a job."""
    released = f", released by {qa['released_by']}" if qa.get("released_by") else ""
    console.print(f"  {'QA':<15} {qa.get('verdict')} (policy {qa.get('policy', '-')}, action "
                  f"{qa.get('action', '-')}{released}; noise σ {qa.get('noise_sigma')}, "
                  f"{qa.get('slices_measured')} slices)")  # fmt: skip
    table = Table(title="QA checks")
    for column in ("Check", "Value", "Limit", "Passed", "Detail"):
        table.add_column(column)
    for name, check in qa.get("checks", {}).items():
        value, limit = check.get("value"), check.get("limit")
        shown = "-" if value is None else f"{value:.4g}"
        bound = "-" if limit is None else f"{limit:g}"
        passed = "yes" if check.get("passed") else "NO"
        table.add_row(name, shown, bound, passed, check.get("detail") or "")
    console.print(table)


@app.command()
def audit(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    in_progress: Annotated[
        bool, typer.Option(help="allow jobs still in progress (a busy node)")
    ] = False,
) -> None:
    """Check the node's invariants: every instance in one finished job, outputs complete,
    leases held, reasons recorded, no orphan files. Exit status 1 when one is broken."""
    from pacs_node.audit import audit as run_audit
    from pacs_node.storage import InstanceStore

    settings = _settings(config)
    findings = run_audit(
        _sessions(settings), InstanceStore(settings.data_dir), settled=not in_progress
    )
    if as_json:
        typer.echo(json.dumps([f.as_dict() for f in findings]))
    elif findings:
        for finding in findings:
            console.print(f"[red]invariant {finding.invariant}:[/red] {finding.detail}")
    else:
        console.print("every invariant holds")
    if findings:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the job database to the newest schema."""
    settings = _settings(config)
    from pacs_node.db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    console.print("job database is up to date")


@models_app.command("list")
def models_list(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List presets and model cards with versions, checksums and availability; experimental
    presets (run only with models.allow_experimental) are marked, with the reason."""
    from models.checkpoint import CheckpointError
    from pacs_node.enhancers import EnhancerCache

    settings = _settings(config)
    try:
        cache = EnhancerCache(settings)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    cards = cache.registry.cards()
    rows: list[dict[str, Any]] = []
    for name, preset in sorted(cache.presets.items()):
        model = preset.model_for(settings.device) if preset.model else None
        found = cards.get(model) if model else None
        card = found[1] if found else None
        if preset.classical:
            status, version, sha = "ready", "classical", ""
        elif isinstance(card, CheckpointError):
            status, version, sha = f"invalid card: {card}", "", ""
        elif card is None:
            status, version, sha = "weights not installed", "", ""
        else:
            status, version, sha = "ready", card.version, card.weights_sha256
        rows.append(
            {
                "preset": name,
                "default": name == settings.preset,
                "model": model or preset.classical,
                "version": version,
                "task": card.task
                if card is not None and not isinstance(card, CheckpointError)
                else "",
                "sha256": sha,
                "status": status,
                "experimental": preset.experimental,
                "description": preset.description,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Presets ({settings.models.presets_path})")
    for column in ("Preset", "Model", "Version", "Task", "SHA-256", "Status", "Description"):
        table.add_column(column)
    for row in rows:
        label = f"{row['preset']} (default)" if row["default"] else str(row["preset"])
        if row["experimental"]:
            label += " (experimental)"
        table.add_row(
            label, str(row["model"]), str(row["version"]), str(row["task"]),
            str(row["sha256"])[:16], str(row["status"]), str(row["description"]),
        )  # fmt: skip
    console.print(table)


@app.command()
def enhance(
    input_dir: Annotated[
        Path, typer.Argument(help="folder of DICOM files", exists=True, file_okay=False)
    ],
    output_dir: Annotated[Path, typer.Argument(help="where derived series are written")],
    preset: Annotated[
        str | None, typer.Option(help="preset name (default: PACS_NODE_PRESET)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Enhance every series of a folder offline, through the worker's code path."""
    from rich.progress import Progress

    from pacs_node.offline import enhance_folder

    settings = _settings(config)
    _configure_logging("WARNING")
    name = preset or settings.preset
    with Progress(console=console, transient=False) as bar:

        def factory(label: str, total: int) -> Callable[[int, int], None]:
            task = bar.add_task(f"{name}: {label[:40]}", total=total)
            return lambda done, _total: bar.update(task, completed=done)

        try:
            outcomes = enhance_folder(settings, input_dir, output_dir, name, factory)
        except EnhancementError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    table = Table(title=f"{input_dir} -> {output_dir}")
    for column in ("Series", "Description", "Instances", "Result", "Details"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(
            str(outcome.series_number or ""), outcome.description, str(outcome.instances),
            outcome.status, f"{outcome.message} {outcome.output_dir or ''}".strip(),
        )  # fmt: skip
    console.print(table)
    if any(o.status in ("FAILED", "QA_FAILED") for o in outcomes):
        raise typer.Exit(1)


def _destination_text(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "dicom":
        return f"{spec['ae_title']}@{spec['host']}:{spec['port']}"
    return str(spec.get("url") or spec.get("reason") or spec)


@rules_app.command("test")
def rules_test(
    files: Annotated[list[Path], typer.Argument(help="DICOM files", exists=True, dir_okay=False)],
    called: Annotated[
        str | None, typer.Option(help="called AE title (default: the STOW-RS pipeline)")
    ] = None,
    calling: Annotated[str, typer.Option(help="calling AE title")] = "SCANNER",
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show which rule, preset and destinations each file would get, and why."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from pacs_node.dicom.classify import skip_reason
    from pacs_node.enhancers import EnhancerCache
    from pacs_node.routing import load_routing

    settings = _settings(config)
    try:
        routing = load_routing(settings)
        presets = EnhancerCache(settings).presets
        routing.check_presets(list(presets))
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    problem = routing.admission_problem(called, calling, None) if called else None
    if problem is not None:
        console.print(f"[red]association would be rejected: {problem[1]}[/red]")
        raise typer.Exit(1)
    rows: list[dict[str, Any]] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            rows.append({"file": str(path), "error": f"not a DICOM file: {exc}"})
            continue
        decision = routing.decide(ds, calling, called)
        skip = skip_reason(ds)
        preset = presets.get(decision.preset) if decision.preset else None
        modality = str(ds.get("Modality", "") or "")
        if skip is None and decision.preset is None:
            skip = f"rule {decision.rule!r} does not enhance"
        elif skip is None and preset and preset.modality.upper() not in ("ANY", modality.upper()):
            skip = f"preset {preset.name} is for {preset.modality}, the series is {modality}"
        rows.append(
            {
                "file": str(path),
                "pipeline": decision.pipeline,
                "rule": decision.rule,
                "preset": decision.preset,
                "strength": decision.strength or (preset.strength if preset else None),
                "destinations": [str(d) for d in decision.destinations],
                "skipped": skip,
                "not_matched": decision.reasons,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        if "error" in row:
            console.print(f"[red]{row['file']}: {row['error']}[/red]")
            continue
        outcome = f"SKIPPED: {row['skipped']}" if row["skipped"] else f"preset {row['preset']}"
        console.print(
            f"[bold]{row['file']}[/bold]: {row['pipeline']} rule [bold]{row['rule']}[/bold] -> "
            f"{outcome}; strength {row['strength']}; "
            f"destinations {', '.join(row['destinations']) or '(none)'}"
        )
        for reason in row["not_matched"]:
            console.print(f"    not {reason}")


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _sessions(settings: Settings) -> Any:
    return _repository(settings).session_factory


def _act(action: Callable[[], Any], as_json: bool, result: dict[str, Any], text: str) -> None:
    from pacs_node.errors import ActionError

    try:
        value = action()
    except ActionError as exc:
        if as_json:
            typer.echo(json.dumps({"error": str(exc)}))
        else:
            console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    result = {k: (value if v is _RESULT else v) for k, v in result.items()}
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        console.print(text.format(value=value, **result))


_RESULT = object()
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@jobs_app.command("retry")
def jobs_retry(
    job_id: int,
    force: Annotated[bool, typer.Option(help="also a job stuck RUNNING or SENDING")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a FAILED job again (the node publishes it within a second); a skipped series
    whose forward failed is forwarded again."""
    from pacs_node.admin import JobAdmin

    admin = JobAdmin(_sessions(_settings(config)))
    _act(lambda: admin.retry(job_id, _actor(), force=force).value, as_json,
         {"job": job_id, "status": _RESULT}, "job {job} is {status} again")  # fmt: skip


@jobs_app.command("release")
def jobs_release(job_id: int, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Send a HELD job's output, which the QA gate stopped, as it is."""
    from pacs_node.admin import JobAdmin

    admin = JobAdmin(_sessions(_settings(config)))
    _act(lambda: admin.release(job_id, _actor()), as_json,
         {"job": job_id, "status": "QUEUED"}, "job {job} released; its output is sent")  # fmt: skip


@jobs_app.command("reject")
def jobs_reject(job_id: int, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Reject a HELD job's output: it is never sent, and the job ends FAILED (qa_rejected)."""
    from pacs_node.admin import JobAdmin

    admin = JobAdmin(_sessions(_settings(config)))
    _act(lambda: admin.reject(job_id, _actor()), as_json,
         {"job": job_id, "status": "FAILED"}, "job {job} rejected")  # fmt: skip


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Cancel a RECEIVING or QUEUED job (it ends FAILED, reason "cancelled by ...")."""
    from pacs_node.admin import JobAdmin

    admin = JobAdmin(_sessions(_settings(config)))
    _act(lambda: admin.cancel(job_id, _actor()), as_json,
         {"job": job_id, "status": "FAILED"}, "job {job} cancelled")  # fmt: skip


@jobs_app.command("rerun")
def jobs_rerun(
    job_id: int,
    preset: Annotated[str | None, typer.Option(help="another preset (default: the same)")] = None,
    strength: Annotated[str | None, typer.Option(help="low | medium | high")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a finished job's series again as a new job, with another preset or the same."""
    from pacs_node.admin import JobAdmin

    admin = JobAdmin(_sessions(_settings(config)))
    _act(lambda: admin.rerun(job_id, _actor(), preset, strength), as_json,
         {"job": _RESULT, "rerun_of": job_id, "status": "QUEUED"},
         "job {value} queued: re-run of job {rerun_of}")  # fmt: skip


@jobs_app.command("delete")
def jobs_delete(job_id: int, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Delete a finished job with its derived files (and its received series when no other
    job uses it)."""
    from pacs_node.admin import JobAdmin

    admin = JobAdmin(_sessions(_settings(config)))
    result = {"job": job_id, "deleted_files": _RESULT}
    _act(lambda: len(admin.delete(job_id, _actor())), as_json, result,
         "job {job} deleted ({value} files)")  # fmt: skip


@tokens_app.command("create")
def tokens_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin, viewer or worker")] = "viewer",
    show_patient: Annotated[
        bool, typer.Option(help="let a viewer see patient identifiers")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API token; it is printed once and stored only as its SHA-256."""
    from pacs_node.admin import TokenStore

    store = TokenStore(_sessions(_settings(config)))
    _act(lambda: store.create(name, role, show_patient), as_json,
         {"name": name, "role": role, "token": _RESULT},
         "token for {name} ({role}), shown once:\n{value}")  # fmt: skip


@tokens_app.command("revoke")
def tokens_revoke(name: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Revoke an API token."""
    from pacs_node.admin import TokenStore

    store = TokenStore(_sessions(_settings(config)))
    _act(lambda: store.revoke(name), as_json, {"name": name, "revoked": True},
         "token {name} revoked")  # fmt: skip


@tokens_app.command("list")
def tokens_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """API tokens (names, roles, dates; never the tokens)."""
    from pacs_node.admin import TokenStore

    tokens = TokenStore(_sessions(_settings(config))).list()
    if as_json:
        typer.echo(json.dumps([asdict(t) for t in tokens], default=_json_default, indent=2))
        return
    table = Table(title=f"API tokens ({len(tokens)})")
    for column in ("Name", "Role", "Patient data", "Created", "Last used", "Revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(t.name, t.role, "yes" if t.show_patient or t.role == "admin" else "no",
                      _time(t.created_at), _time(t.last_used_at), _time(t.revoked_at))  # fmt: skip
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()
