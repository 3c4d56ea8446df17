"""The conformance statement's checked tables against what the code offers."""

from __future__ import annotations

import re
from pathlib import Path

from pacs_node.dicom.validation import ACCEPTED
from pacs_node.scp.server import build_ae
from pacs_node.settings import Settings

VERIFICATION = "1.2.840.10008.1.1"
STATEMENT = Path(__file__).resolve().parents[1] / "docs" / "conformance-statement.md"


def _section(name: str) -> str:
    text = STATEMENT.read_text()
    match = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, re.S)
    assert match, f"section {name} missing from {STATEMENT.name}"
    return match.group(1)


def _uids(section: str) -> set[str]:
    return set(re.findall(r"`([0-9.]+)`", section))


def test_the_sop_class_table_is_what_the_scp_accepts() -> None:
    offered = {str(cx.abstract_syntax) for cx in build_ae(Settings()).supported_contexts}
    assert _uids(_section("scp-sop-classes")) == offered


def test_the_transfer_syntax_table_is_what_the_scp_accepts() -> None:
    ae = build_ae(Settings())
    storage = [cx for cx in ae.supported_contexts if cx.abstract_syntax != VERIFICATION]
    per_context = {frozenset(str(ts) for ts in cx.transfer_syntax) for cx in storage}
    assert per_context == {frozenset(str(s) for s in ACCEPTED)}  # every class, every syntax
    assert _uids(_section("scp-transfer-syntaxes")) == {str(s) for s in ACCEPTED}


def test_the_association_policies_are_the_defaults() -> None:
    settings = Settings()
    rows = re.findall(
        r"\| [^|]+ \| ([0-9.]+)[^|]* \| `([a-z_.]+)` \|", _section("association-policies")
    )
    assert len(rows) == 7
    for value, name in rows:
        section, field = name.split(".")
        assert float(value) == float(getattr(getattr(settings, section), field)), name


def test_the_implementation_identifiers_are_the_ones_announced() -> None:
    ae = build_ae(Settings())
    text = STATEMENT.read_text()
    assert f"| Implementation Class UID | `{ae.implementation_class_uid}` |" in text
    assert f"| Implementation Version Name | `{ae.implementation_version_name}` |" in text
