"""Settings: documented defaults, environment overrides, YAML overlay, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pacs_node.errors import ConfigError
from pacs_node.settings import CStoreDestination, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PACS_NODE_"):
            monkeypatch.delenv(key)


def test_documented_defaults() -> None:
    settings = load_settings()
    assert settings.ae_title == "ENHANCE"
    assert settings.port == 11112
    assert settings.http_port == 8000
    assert settings.data_dir == (Path.cwd() / "var").resolve()
    assert settings.db_url == f"sqlite:///{settings.data_dir / 'jobs.sqlite'}"
    assert settings.celery_broker_url == f"sqla+sqlite:///{settings.data_dir / 'broker.sqlite'}"
    assert settings.destination is None
    assert settings.series_timeout_s == 10
    assert settings.preset == "ct-denoise"
    assert settings.device == "auto"
    assert settings.embedded_worker is True


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACS_NODE_AE_TITLE", "DENOISE")
    monkeypatch.setenv("PACS_NODE_PORT", "4242")
    monkeypatch.setenv("PACS_NODE_HTTP_PORT", "8081")
    monkeypatch.setenv("PACS_NODE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PACS_NODE_DATABASE_URL", "postgresql+psycopg://u@db/pacs")
    monkeypatch.setenv("PACS_NODE_BROKER_URL", "redis://broker:6379/0")
    monkeypatch.setenv("PACS_NODE_DESTINATION", "ORTHANC@pacs.example:4242")
    monkeypatch.setenv("PACS_NODE_SERIES_TIMEOUT_S", "2.5")
    monkeypatch.setenv("PACS_NODE_PRESET", "gaussian")
    monkeypatch.setenv("PACS_NODE_DEVICE", "cpu")
    monkeypatch.setenv("PACS_NODE_WORKER__MAX_ATTEMPTS", "5")
    settings = load_settings()
    assert (settings.ae_title, settings.port, settings.http_port) == ("DENOISE", 4242, 8081)
    assert settings.data_dir == tmp_path.resolve()
    assert settings.db_url == "postgresql+psycopg://u@db/pacs"
    assert settings.celery_broker_url == "redis://broker:6379/0"
    assert settings.destination == CStoreDestination(
        ae_title="ORTHANC", host="pacs.example", port=4242
    )
    assert settings.series_timeout_s == 2.5
    assert (settings.preset, settings.device) == ("gaussian", "cpu")
    assert settings.worker.max_attempts == 5
    assert settings.embedded_worker is False  # an external broker means external workers


def test_yaml_overlay_below_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    overlay = tmp_path / "site.yaml"
    overlay.write_text("ae_title: SITE\nport: 104\nworker:\n  concurrency: 4\n")
    monkeypatch.setenv("PACS_NODE_PORT", "11113")
    settings = load_settings(overlay)
    assert settings.ae_title == "SITE"
    assert settings.port == 11113
    assert settings.worker.concurrency == 4
    assert settings.worker.queue == "pacs_node"  # untouched nested defaults survive


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PACS_NODE_PORT", "70000", "port"),
        ("PACS_NODE_AE_TITLE", "A_TITLE_LONGER_THAN_16", "ae_title"),
        ("PACS_NODE_DESTINATION", "not-a-destination", "AET@host:port"),
        ("PACS_NODE_DEVICE", "tpu", "device"),
        ("PACS_NODE_SERIES_TIMEOUT_S", "0", "series_timeout_s"),
        ("PACS_NODE_MODELS__AMP", "true", "replaced by models.precision"),
        ("PACS_NODE_MODELS__PRECISION", "fp16", "precision"),
    ],
)
def test_invalid_values_fail_clearly(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_misspelt_yaml_key_is_rejected(tmp_path: Path) -> None:
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("series_timout_s: 5\n")
    with pytest.raises(ConfigError, match="series_timout_s"):
        load_settings(overlay)


def test_destination_parse_round_trip() -> None:
    dest = CStoreDestination.parse("PACS@10.1.2.3:104")
    assert (dest.ae_title, dest.host, dest.port) == ("PACS", "10.1.2.3", 104)
    assert str(dest) == "PACS@10.1.2.3:104"
    assert CStoreDestination.parse("PACS@[::1]:104").host == "::1"
    with pytest.raises(ValueError, match="AET@host:port"):
        CStoreDestination.parse("PACS@host")


def test_the_default_destination_may_be_a_dicomweb_url() -> None:
    from pacs_node.routing import StowDestination, default_routing

    settings = Settings(destination="https://pacs.example.org/dicom-web")
    [destination] = default_routing(settings).config.pipelines[0].rules[0].destinations
    assert isinstance(destination, StowDestination)
    assert destination.url == "https://pacs.example.org/dicom-web"
    with pytest.raises(ValidationError, match="nor a DICOMweb URL"):
        Settings(destination="ftp://pacs")


def test_a_tls_port_needs_a_certificate_and_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"tls\.port needs tls\.cert_file and tls\.key_file"):
        Settings(tls={"port": 2762})
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(tls={"port": 2762, "cert_file": tmp_path / "x.pem", "key_file": tmp_path / "k"})


def test_receiver_processes_need_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(scp={"processes": 1}).scp.processes == 1  # anywhere
    monkeypatch.setattr("sys.platform", "darwin")
    with pytest.raises(ValidationError, match=r"scp\.processes above 1 needs Linux"):
        Settings(scp={"processes": 2})
    monkeypatch.setattr("sys.platform", "linux")
    assert Settings(scp={"processes": 2}).scp.processes == 2
