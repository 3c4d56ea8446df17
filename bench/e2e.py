"""End to end: from the first C-STORE of a series to the last derived instance stored in
the PACS, against a direct C-STORE of the same series into the same kind of PACS.

Usage::

    python bench/e2e.py --slices 64 --preset ct-denoise-fast --rounds 3 \\
        --out bench/results/e2e-cpu-2cores.json

Each round sends a fresh copy of the series (new UIDs) with dcmtk ``storescu`` to a node
(``pacs-node serve``, embedded worker, SQLite) whose destination is an Orthanc, and times
until Orthanc holds every derived instance; the node's completion timeout
(``series_timeout_s``, the quiet period that ends a series) is subtracted. The direct time
is ``storescu`` of the same files into a fresh Orthanc. The first round includes loading
the model (a cold worker); the report gives every round. Slices: the first ``--slices`` of
the real pancreas series in ``../shared/data`` where present, else synthetic ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from tests.helpers.synthetic import make_ct_series  # noqa: E402
from tests.integration.node import NodeProcess  # noqa: E402
from tests.integration.peers import OrthancPeer  # noqa: E402

PANCREAS = ROOT.parent / "shared" / "data" / "ct_pancreas_tcia.tar.xz"
COMPLETION_S = 2.0


def source_slices(work: Path, count: int) -> tuple[list[Path], str]:
    """``count`` slices as files, and what they are."""
    if PANCREAS.is_file():
        with tarfile.open(PANCREAS, "r:xz") as tar:
            tar.extractall(work / "pancreas", filter="data")
        files = sorted((work / "pancreas").rglob("*.dcm"))
        positions = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
                     for f in files]  # fmt: skip
        headers = sorted(zip(positions, files, strict=True))
        chosen = [f for _, f in headers[:count]]
        return chosen, f"{len(chosen)} real pancreas CT slices 512 x 512 (TCIA, CC BY 4.0)"
    make_ct_series(work / "synthetic", n_slices=count, rows=512, cols=512, noise_hu=30.0)
    return sorted((work / "synthetic").rglob("*.dcm")), f"{count} synthetic CT slices 512 x 512"


def fresh_copy(files: list[Path], out: Path) -> None:
    """The series again with new study, series and instance UIDs."""
    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"{index:04d}.dcm", enforce_file_format=True)


def storescu(folder: Path, port: int, aet: str) -> None:
    command = ["storescu", "-aec", aet, "+sd", "+r", "127.0.0.1", str(port), str(folder)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env)


def count_instances(pacs: OrthancPeer) -> int:
    return int(pacs.client.get("/statistics").json()["CountInstances"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--preset", default="ct-denoise-fast")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--associations",
        type=int,
        default=1,
        help="the node's send.associations (parallel C-STOREs to the PACS)",
    )
    args = parser.parse_args()
    # Inherited by Orthanc (dcmtk inside): without it, its answers wait for delayed
    # acknowledgements (tens of ms per instance), as in bench/ingest.py.
    os.environ["TCP_NODELAY"] = "1"
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files, what = source_slices(work, args.slices)
        with (
            OrthancPeer("PACS") as pacs,
            NodeProcess(work / "node", preset=args.preset, series_timeout_s=str(COMPLETION_S),
                        destination=f"PACS@127.0.0.1:{pacs.dicom_port}",
                        send__associations=str(args.associations)) as node,
        ):  # fmt: skip
            for round_ in range(args.rounds):
                folder = work / f"round{round_}"
                fresh_copy(files, folder)
                before = count_instances(pacs)
                started = time.perf_counter()
                storescu(folder, node.port, node.ae_title)
                sent = time.perf_counter() - started
                deadline = started + 900
                while count_instances(pacs) < before + len(files):
                    if time.perf_counter() > deadline:
                        raise SystemExit("the derived series did not arrive within 900 s")
                    time.sleep(0.1)
                total = time.perf_counter() - started
                with OrthancPeer("DIRECT") as direct:
                    begun = time.perf_counter()
                    storescu(folder, direct.dicom_port, direct.aet)
                    direct_s = time.perf_counter() - begun
                row = {"round": round_ + 1, "send_to_node_s": sent, "end_to_end_s": total,
                       "end_to_end_minus_completion_s": total - COMPLETION_S,
                       "direct_c_store_s": direct_s,
                       "ratio": (total - COMPLETION_S) / direct_s}  # fmt: skip
                rounds.append(row)
                print(json.dumps(row), flush=True)
    warm = rounds[1:] or rounds
    report = {
        "command": "python bench/e2e.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, CPU",
        "series": what, "preset": args.preset, "completion_timeout_s": COMPLETION_S,
        "send_associations": args.associations,
        "rounds": rounds,
        "warm_median": {k: statistics.median(r[k] for r in warm)
                        for k in ("end_to_end_minus_completion_s", "direct_c_store_s", "ratio")},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    median = report["warm_median"]
    print(f"warm rounds: node {median['end_to_end_minus_completion_s']:.1f} s end to end "
          f"(completion timeout subtracted) against {median['direct_c_store_s']:.1f} s direct: "
          f"{median['ratio']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
