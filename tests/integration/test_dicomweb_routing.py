"""End to end through routing and DICOMweb: rules per series, admission control with dcmtk,
STOW-RS in and out (Orthanc's DICOMweb plugin) and a worker that shares no disk with the node."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pydicom
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom.filebase import DicomBytesIO
from pydicom.uid import SecondaryCaptureImageStorage

from tests.helpers.synthetic import file_path, make_ct_series
from tests.integration.node import NodeProcess
from tests.integration.peers import (
    CaptureSCP,
    OrthancPeer,
    dicomweb_plugin,
    echoscu,
    orthanc_binary,
    storescu,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed"),
    pytest.mark.skipif(dicomweb_plugin() is None, reason="orthanc-dicomweb not installed"),
]


def _routing_file(tmp_path: Path, config: dict[str, object]) -> str:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _metrics(node: NodeProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed with the Prometheus client's own parser: sample name → labels → value."""
    text = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def _study(tmp_path: Path) -> dict[str, list[pydicom.Dataset]]:
    """One study as a scanner sends it: CT, MR, a localizer and a secondary capture."""
    ct = make_ct_series(tmp_path / "ct", n_slices=4, rows=48, cols=48, seed=1, series_number=2,
                        series_description="Abdomen 1mm")  # fmt: skip
    study = ct[0].StudyInstanceUID
    mr = make_ct_series(tmp_path / "mr", n_slices=3, rows=48, cols=48, seed=2, series_number=3,
                        study_uid=study, modality="MR", series_description="T2 ax")  # fmt: skip
    scout = make_ct_series(
        tmp_path / "scout", n_slices=1, rows=48, cols=48, seed=3, series_number=1,
        study_uid=study, series_description="Scout",
    )  # fmt: skip
    scout[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout[0].save_as(file_path(scout[0]), enforce_file_format=True)
    capture = make_ct_series(
        tmp_path / "sc", n_slices=1, rows=48, cols=48, seed=4, series_number=99,
        study_uid=study, series_description="Dose",
    )  # fmt: skip
    capture[0].SOPClassUID = SecondaryCaptureImageStorage
    capture[0].file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    capture[0].Modality = "OT"
    capture[0].save_as(file_path(capture[0]), enforce_file_format=True)
    return {"ct": ct, "mr": mr, "scout": scout, "sc": capture}


def test_a_study_gets_exactly_the_expected_jobs_and_skips(tmp_path: Path) -> None:
    study = _study(tmp_path)
    with CaptureSCP("PACS") as pacs, CaptureSCP("MRPACS") as mr_pacs:
        routing = _routing_file(tmp_path, {
            "peers": [{"ae_title": "CT1", "host": "127.0.0.1", "port": pacs.port}],
            "pipelines": [{
                "ae_title": "DENOISE", "allowed_callers": ["CT1"], "check_host": True,
                "rules": [
                    {"name": "ct", "match": {"modality": "CT", "series_description": "abdomen"},
                     "preset": "gaussian", "strength": "medium", "destinations": ["sender"]},
                    {"name": "mr", "match": {"modality": "MR"}, "preset": "identity",
                     "destinations": [f"MRPACS@127.0.0.1:{mr_pacs.port}"]},
                    {"name": "default", "preset": "gaussian", "destinations": ["sender"],
                     "forward_skipped": True},
                ],
            }],
        })  # fmt: skip
        with NodeProcess(tmp_path / "node", routing_file=routing, ae_title="DENOISE") as node:
            # Admission control, seen by dcmtk: unknown called and calling AE titles.
            assert echoscu(node.port, "NOPE", "CT1").returncode != 0
            assert echoscu(node.port, "DENOISE", "STRANGER").returncode != 0
            assert echoscu(node.port, "DENOISE", "CT1").returncode == 0
            refused = storescu(tmp_path / "ct", node.port, "DENOISE", "STRANGER", scan_dir=True)
            assert refused.returncode != 0
            sent = storescu([tmp_path / n for n in ("ct", "mr", "scout", "sc")], node.port,
                            "DENOISE", "CT1", scan_dir=True)  # fmt: skip
            assert sent.returncode == 0, sent.stdout + sent.stderr
            jobs = {j["series_description"]: j for j in node.wait_until_finished(4)}
            assert len(jobs) == 4, jobs
            assert {k: (j["status"], j["rule"]) for k, j in jobs.items()} == {
                "Abdomen 1mm": ("DONE", "ct"),
                "T2 ax": ("DONE", "mr"),
                "Scout": ("SKIPPED", "default"),
                "Dose": ("SKIPPED", "default"),
            }
            assert "localizer" in jobs["Scout"]["error_message"]
            assert "Secondary Capture" in jobs["Dose"]["error_message"]
            assert jobs["Abdomen 1mm"]["strength"] == "medium"
            # "sender" went back to CT1's registered address, MR to its own PACS; the
            # skipped localizer and dose page were forwarded untouched (forward_skipped).
            received = pacs.wait_for(6, timeout_s=60)
            untouched = {str(ds.SOPInstanceUID): ds for ds in received}
            for name in ("scout", "sc"):
                original = study[name][0]
                assert untouched[str(original.SOPInstanceUID)].PixelData == original.PixelData
            assert len(mr_pacs.wait_for(3, timeout_s=30)) == 3
            deadline = time.monotonic() + 30  # the audit line follows the last C-STORE
            while time.monotonic() < deadline:
                events = [e["message"] for e in node.job(jobs["Scout"]["id"])["events"]]
                if any(m.startswith("forwarded untouched: 1 instances") for m in events):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"no forwarding event: {events}")
            rules = node.cli("rules", "test", "--called", "DENOISE", "--calling", "CT1",
                             str(file_path(study["mr"][0])), str(file_path(study["scout"][0])),
                             "--json")  # fmt: skip
            tested = yaml.safe_load(rules.stdout)
            assert [r["rule"] for r in tested] == ["mr", "default"]
            assert "localizer" in tested[1]["skipped"]


def test_stow_in_is_complete_at_once_and_stow_out_reaches_orthanc(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "in", n_slices=4, rows=48, cols=48)
    with OrthancPeer("ORTHANC", dicomweb=True) as orthanc, CaptureSCP("COPY") as copy:
        rule = {"name": "default", "preset": "identity",
                "destinations": [orthanc.dicomweb_url, f"COPY@127.0.0.1:{copy.port}"]}  # fmt: skip
        routing = _routing_file(tmp_path, {"pipelines": [{"ae_title": "ENHANCE", "rules": [rule]}]})
        # A quiet period of 10 minutes: only the end of the STOW-RS request can close it.
        with NodeProcess(tmp_path / "node", routing_file=routing, series_timeout_s="600") as node:
            client = DICOMwebClient(
                url=f"http://127.0.0.1:{node.http_port}/dicom-web",
                headers={"Authorization": f"Bearer {node.token('ops', 'admin')}"},
            )
            before = _metrics(node)
            assert before["pacs_node_jobs"][(("state", "DONE"),)] == 0
            response = client.store_instances(series)
            assert len(response.ReferencedSOPSequence) == 4
            [job] = node.wait_until_finished(1, timeout_s=120)
            assert job["status"] == "DONE", node.log()
            detail = node.job(job["id"])
            assert any("declared complete by STOW-RS" in e["message"] for e in detail["events"])
            derived_uid = detail["output_series_instance_uid"]
            stored = orthanc.wait_for_instances(derived_uid, 4)
            assert len(copy.wait_for(4, timeout_s=30)) == 4
            # Identity preset: the derived pixels are the source pixels, through STOW-RS.
            by_source = {str(ds.SOPInstanceUID): ds for ds in series}
            for item in stored:
                ds = pydicom.dcmread(DicomBytesIO(orthanc.instance_file(item["ID"])))
                source = by_source[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
                assert ds.pixel_array.tobytes() == source.pixel_array.tobytes()
            # Prometheus counters moved with the job.
            after = _metrics(node)
            assert after["pacs_node_instances_received_total"][(("protocol", "STOW-RS"),)] == 4
            assert after["pacs_node_jobs"][(("state", "DONE"),)] == 1
            assert after["pacs_node_job_total_seconds_count"][()] == 1
            assert after["pacs_node_queue_depth"][()] == 0
            # The node serves the derived series too (QIDO-RS + WADO-RS).
            found = client.search_for_series(series[0].StudyInstanceUID)
            assert len(found) == 2
            assert len(client.retrieve_series(series[0].StudyInstanceUID, derived_uid)) == 4


def test_pacs_node_destination_as_a_dicomweb_url_sends_by_stow(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n_slices=3, rows=32, cols=32)
    with (
        OrthancPeer("ORTHANC", dicomweb=True) as orthanc,
        NodeProcess(tmp_path / "node", preset="identity", destination=orthanc.dicomweb_url) as node,
    ):
        assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
        [job] = node.wait_until_finished(1, timeout_s=120)
        assert job["status"] == "DONE", node.log()
        derived = node.job(job["id"])["output_series_instance_uid"]
        assert len(orthanc.wait_for_instances(derived, 3)) == 3
