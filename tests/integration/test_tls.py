"""DICOM TLS with dcmtk's echoscu, storescu and storescp as the other side: the node's TLS
port admits a client whose certificate its CA signed, and refuses plain TCP and a
certificate from another CA; derived series reach a destination over TLS."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.certs import issue, make_ca
from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess
from tests.integration.peers import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescp") is None, reason="dcmtk not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_tls_port_admits_only_clients_of_its_ca_and_sends_over_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ca = make_ca(certs, "hospital-ca")
    node_cert, client, pacs_cert = (issue(ca, certs, n) for n in ("node", "modality", "pacs"))
    rogue = issue(make_ca(certs, "rogue-ca"), certs, "intruder")
    make_ct_series(tmp_path / "in", n_slices=2, rows=32, cols=32)

    # The destination: dcmtk's storescp, TLS only, requiring the node's certificate.
    received, pacs_port = tmp_path / "pacs", free_port()
    received.mkdir()
    pacs = subprocess.Popen(
        ["storescp", "+tls", str(pacs_cert.key), str(pacs_cert.cert), "+cf", str(ca.cert),
         "-aet", "PACS", "-od", str(received), str(pacs_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    routing = tmp_path / "routing.yaml"
    destination = {"kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port,
                   "tls": True}  # fmt: skip
    rule = {"name": "default", "preset": "identity", "destinations": [destination]}
    routing.write_text(yaml.safe_dump({"pipelines": [{"ae_title": "ENHANCE", "rules": [rule]}]}))
    tls_port = free_port()
    try:
        with NodeProcess(
            tmp_path / "node", routing_file=str(routing), tls__port=str(tls_port),
            tls__cert_file=str(node_cert.cert), tls__key_file=str(node_cert.key),
            tls__ca_file=str(ca.cert),
        ) as node:  # fmt: skip
            good = ("+tls", str(client.key), str(client.cert), "+cf", str(ca.cert))
            address = ("-aec", "ENHANCE", "127.0.0.1", str(tls_port))
            assert _dcmtk("echoscu", *good, *address).returncode == 0
            # Plain TCP to the TLS port, and a certificate the node's CA did not sign.
            assert _dcmtk("echoscu", *address).returncode != 0
            intruder = ("+tls", str(rogue.key), str(rogue.cert), "+cf", str(ca.cert))
            assert _dcmtk("echoscu", *intruder, *address).returncode != 0
            # A series over TLS in, enhanced, and out over TLS to storescp.
            sent = _dcmtk("storescu", *good, "+sd", "+r", *address, str(tmp_path / "in"))
            assert sent.returncode == 0, sent.stderr
            [job] = node.wait_until_finished(1, timeout_s=120)
            assert job["status"] == "DONE", node.job(job["id"])
            deadline = time.monotonic() + 20
            while len(list(received.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(list(received.iterdir())) == 2
            assert node.jobs()[0]["status"] == "DONE"
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
