"""Routing rules, their validation, and admission control on real associations."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from pacs_node.completion import CompletionMonitor
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository
from pacs_node.dispatch import Dispatcher
from pacs_node.enhancers import EnhancerCache
from pacs_node.errors import ConfigError
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing, load_routing
from pacs_node.scp.server import start_scp
from pacs_node.settings import REPO_ROOT, Settings
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import make_ct_series
from tests.integration.peers import free_port

EXAMPLE = REPO_ROOT / "configs" / "routing.example.yaml"


def _routing(tmp_path: Path, config: dict[str, object]) -> Routing:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_routing(Settings(data_dir=tmp_path, routing_file=path))


def _header(**values: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 512
    ds.SliceThickness = 1.0
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_the_example_file_is_valid_and_names_only_shipped_presets() -> None:
    routing = load_routing(Settings(routing_file=EXAMPLE))
    routing.check_presets(list(EnhancerCache(Settings()).presets))
    assert routing.ae_titles == ["DENOISE", "SR2X"]
    assert routing.dicomweb_pipeline.ae_title == "DENOISE"


def test_first_matching_rule_wins_and_reasons_are_given() -> None:
    routing = load_routing(Settings(routing_file=EXAMPLE))
    thin = routing.decide(_header(), "CT_SCANNER", "DENOISE")
    assert (thin.rule, thin.preset, thin.strength) == ("ct-thin", "ct-denoise", "high")
    brain = routing.decide(
        _header(SliceThickness=5.0, BodyPartExamined="HEAD", SeriesDescription="Brain axial"),
        "CT_SCANNER",
        "DENOISE",
    )
    assert (brain.rule, brain.strength) == ("ct-brain-soft", "medium")
    assert brain.reasons == ["ct-thin: SliceThickness 5 outside [0.5, 3]"]
    mr = routing.decide(_header(Modality="MR"), "PACS", "DENOISE")
    assert mr.rule == "mr" and [str(d) for d in mr.destinations] == [
        "PACS@127.0.0.1:4242",
        "http://127.0.0.1:8042/dicom-web",
    ]
    other = routing.decide(_header(Modality="PT"), "PACS", "DENOISE")
    assert (other.rule, other.preset) == ("default", None)
    small = routing.decide(_header(Rows=128, Columns=128, SliceThickness=5.0), "PACS", "DENOISE")
    assert small.reasons[0] == "ct-thin: SliceThickness 5 outside [0.5, 3]"
    sr = routing.decide(_header(Modality="MR"), "PACS", "SR2X")
    assert (sr.pipeline, sr.preset) == ("SR2X", "ct-sr2x")
    # STOW-RS uploads (no called AE title) follow the dicomweb pipeline.
    assert routing.decide(_header(), None, None).pipeline == "DENOISE"


def test_return_to_sender_resolves_known_peers_only() -> None:
    routing = load_routing(Settings(routing_file=EXAMPLE))
    known = routing.decide(_header(), "PACS", "DENOISE")
    [resolved] = routing.resolved_destinations(known, "PACS")
    assert resolved == {"kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242,
                        "transfer_syntax": None, "tls": False}  # fmt: skip
    [unresolved] = routing.resolved_destinations(known, "CT_SCANNER")  # no port known
    assert unresolved["kind"] == "unresolved" and "CT_SCANNER" in unresolved["reason"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pipelines": [{"ae_title": "A", "rules": [{"name": "x", "preset": "p",
          "match": {"modality": "CT"}}]}]}, "needs a default rule"),
        ({"pipelines": [{"ae_title": "A", "rules": [{"name": "d", "preset": "p"},
          {"name": "late", "preset": "p"}]}]}, "can never match"),
        ({"pipelines": [{"ae_title": "A", "rules": [{"name": "d", "preset": "p",
          "match": {"series_description": "(unclosed"}}, {"name": "e", "preset": "p"}]}]},
         "invalid regular expression"),
        ({"pipelines": [{"ae_title": "A", "rules": [{"name": "d", "preset": "p",
          "destinations": ["not a destination"]}]}]}, "AET@host:port"),
        ({"pipelines": [{"ae_title": "A", "rules": [{"name": "d", "preset": "p"}]},
                        {"ae_title": "A", "rules": [{"name": "d", "preset": "p"}]}]}, "unique"),
        ({"pipelines": [{"ae_title": "A" * 17, "rules": [{"name": "d", "preset": "p"}]}]},
         "1-16 printable"),
        ({"pipelines": [{"ae_title": "A", "rules": [{"name": "d", "preset": "p",
          "colour": "red"}]}]}, "Extra inputs"),
    ],
)  # fmt: skip
def test_invalid_routing_files_fail_at_start_up(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match="invalid routing file") as error:
        _routing(tmp_path, config)
    assert message in str(error.value)


def test_unknown_preset_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    routing = _routing(
        tmp_path, {"pipelines": [{"ae_title": "A", "rules": [{"name": "d", "preset": "nope"}]}]}
    )
    with pytest.raises(ConfigError, match="rule 'd' uses unknown preset 'nope'"):
        routing.check_presets(["ct-denoise"])
    with pytest.raises(ConfigError, match="cannot read routing file"):
        load_routing(Settings(routing_file=tmp_path / "missing.yaml"))


# -- admission control on real associations ---------------------------------------------


@pytest.fixture()
def two_pipelines(tmp_path: Path, repository: JobRepository) -> Iterator[tuple[int, Routing]]:
    routing = _routing(
        tmp_path,
        {
            "peers": [
                {"ae_title": "CT1", "host": "127.0.0.1"},
                {"ae_title": "FAR", "host": "10.9.9.9"},
            ],
            "pipelines": [
                {"ae_title": "DENOISE", "allowed_callers": ["CT1", "FAR"], "check_host": True,
                 "rules": [{"name": "all", "preset": "ct-denoise"}]},
                {"ae_title": "SR2X", "sop_classes": [str(CTImageStorage)],
                 "rules": [{"name": "sr", "preset": "ct-sr2x"}]},
            ],
        },
    )  # fmt: skip
    settings = Settings(ae_title="DENOISE", port=free_port(), data_dir=tmp_path)
    server = start_scp(settings, Receiver(InstanceStore(tmp_path), repository, routing))
    yield settings.port, routing
    server.shutdown()


def _associate(port: int, calling: str, called: str, contexts: list[str]) -> object:
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context, [ExplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title=called)


def _diagnostic(assoc: object) -> int:
    assert assoc.is_rejected  # type: ignore[attr-defined]
    return int(assoc.acceptor.primitive.diagnostic)  # type: ignore[attr-defined]


def test_unknown_called_and_calling_ae_titles_are_rejected(
    two_pipelines: tuple[int, Routing],
) -> None:
    port, _ = two_pipelines
    assert _diagnostic(_associate(port, "CT1", "NOPE", [Verification])) == 7
    assert _diagnostic(_associate(port, "STRANGER", "DENOISE", [Verification])) == 3
    # FAR is allowed, but must call from 10.9.9.9.
    assert _diagnostic(_associate(port, "FAR", "DENOISE", [Verification])) == 3
    for called in ("DENOISE", "SR2X"):
        assoc = _associate(port, "CT1", called, [Verification])
        assert assoc.is_established  # type: ignore[attr-defined]
        assert assoc.acceptor.ae_title == called  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]


def test_each_pipeline_routes_with_its_own_rules_and_sop_classes(
    two_pipelines: tuple[int, Routing], repository: JobRepository
) -> None:
    port, _ = two_pipelines
    ct = make_ct_series(None, n_slices=1, rows=16, cols=16, seed=1)
    mr = make_ct_series(None, n_slices=1, rows=16, cols=16, seed=2, modality="MR")
    mr[0].SOPClassUID = MRImageStorage
    mr[0].file_meta.MediaStorageSOPClassUID = MRImageStorage
    assoc = _associate(port, "ANY", "SR2X", [CTImageStorage, MRImageStorage])
    assert assoc.is_established  # type: ignore[attr-defined]
    # Only CT Image Storage is accepted on SR2X: MR has no presentation context.
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}  # type: ignore[attr-defined]
    assert accepted == {CTImageStorage}
    assert assoc.send_c_store(ct[0]).Status == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assoc = _associate(port, "CT1", "DENOISE", [CTImageStorage])
    other = make_ct_series(None, n_slices=1, rows=16, cols=16, seed=3)
    assert assoc.send_c_store(other[0]).Status == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    jobs = {j.called_ae_title: j for j in repository.list_jobs()}
    assert (jobs["SR2X"].rule, jobs["SR2X"].preset) == ("sr", "ct-sr2x")
    assert (jobs["DENOISE"].rule, jobs["DENOISE"].preset) == ("all", "ct-denoise")


def test_monitor_skips_rules_without_preset_and_other_modalities(
    tmp_path: Path, repository: JobRepository
) -> None:
    routing = _routing(tmp_path, {"pipelines": [{"ae_title": "A", "rules": [
        {"name": "dose", "match": {"series_description": "^dose"}, "preset": None},
        {"name": "d", "preset": "ct-denoise"}]}]})  # fmt: skip
    receiver = Receiver(InstanceStore(tmp_path), repository, routing)
    from pacs_node.ingest import Origin

    origin = Origin("CT1", "A", "CT1 (test)")
    for seed, modality, description in ((1, "CT", "Dose report"), (2, "MR", "T1"), (3, "CT", "Ax")):
        [ds] = make_ct_series(tmp_path / str(seed), n_slices=1, rows=16, cols=16, seed=seed,
                              modality=modality, series_description=description)  # fmt: skip
        from tests.helpers.synthetic import file_path

        result = receiver.accept(ds, file_path(ds).read_bytes(), ExplicitVRLittleEndian, origin)
        assert result.ok
    dispatcher = Dispatcher(f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}", "q")
    monitor = CompletionMonitor(repository, dispatcher, 0.0, 1.0, "PACS Enhancement Node",
                                preset_modalities={"ct-denoise": "CT"})  # fmt: skip
    monitor.run_once()
    dispatcher.close()
    jobs = {j.series_description: j for j in repository.list_jobs()}
    assert jobs["Dose report"].status is JobStatus.SKIPPED
    assert "rule 'dose' does not enhance" in (jobs["Dose report"].error_message or "")
    assert jobs["T1"].status is JobStatus.SKIPPED
    assert "preset ct-denoise is for CT, the series is MR" in (jobs["T1"].error_message or "")
    assert jobs["Ax"].status is JobStatus.QUEUED
    assert repository.due_receiving_jobs(timedelta(0)) == []


def test_stow_credentials_come_from_the_named_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pacs_node.errors import DispatchError
    from pacs_node.routing import StowDestination
    from pacs_node.scu import _stow_headers

    monkeypatch.setenv("PACS_TOKEN", "s3cret")
    bearer = StowDestination(url="https://pacs/dicom-web", token_env="PACS_TOKEN")
    assert _stow_headers(bearer) == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in bearer.model_dump_json()  # only the variable's name is stored
    monkeypatch.setenv("PACS_USER", "node")
    monkeypatch.setenv("PACS_PASSWORD", "pw")
    basic = StowDestination(url="https://pacs/dicom-web", username_env="PACS_USER",
                            password_env="PACS_PASSWORD")  # fmt: skip
    assert _stow_headers(basic) == {"Authorization": "Basic bm9kZTpwdw=="}
    assert _stow_headers(StowDestination(url="http://pacs/dicom-web")) == {}
    monkeypatch.delenv("PACS_TOKEN")
    with pytest.raises(DispatchError, match="PACS_TOKEN is empty"):
        _stow_headers(bearer)
