"""``pacs-node config``: the effective settings and the generated configuration reference."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from pacs_node.config_reference import render_markdown, update_document
from pacs_node.errors import ConfigError
from pacs_node.settings import load_settings

config_app = typer.Typer(
    help="Settings: what is in effect, and the reference.", no_args_is_help=True
)

# user:password@ after the scheme, up to the last "@" (as SQLAlchemy and redis-py parse
# it: a password may hold "/" or "@"), and password=... in a query string.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):\S*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&\s]*", re.IGNORECASE)


def _mask(value: Any) -> Any:
    """Passwords inside URLs (database, broker) replaced by ``***``."""
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask(item) for item in value]
    if isinstance(value, str):
        return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", value))
    return value


@config_app.command("show")
def config_show(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML overlay on configs/default.yaml", exists=True),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
) -> None:
    """The settings in effect (defaults, YAML overlay and environment merged), secrets and
    passwords in URLs masked; exit 2 with the reasons if they are invalid."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc
    values = _mask(settings.model_dump(mode="json"))
    if as_json:
        typer.echo(json.dumps(values, indent=2))
    else:
        typer.echo(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), nl=False)


@config_app.command("reference")
def config_reference(
    write: Annotated[
        Path | None,
        typer.Option(help="rewrite the generated block of this Markdown file instead of printing"),
    ] = None,
) -> None:
    """The configuration reference (every setting, its environment variable, type, default
    and meaning), generated from the settings model."""
    if write is None:
        typer.echo(render_markdown(), nl=False)
        return
    try:
        updated = update_document(write.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot update {write}: {exc}", err=True)
        raise typer.Exit(2) from exc
    write.write_text(updated, encoding="utf-8")
    typer.echo(f"{write}: configuration reference updated")
