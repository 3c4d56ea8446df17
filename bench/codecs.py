"""Decode time and HU error of every pixel-data plugin installed, per transfer syntax, on
the real GE CT slice of ../shared/data/ct_transfer_syntaxes.tar.xz (512 x 512, 16-bit).

Usage: python bench/codecs.py --out bench/results/codecs-cpu-2cores.json [--repeat 20]

The node ships only permissively licensed plugins (pacs_node/dicom/codecs.py); to compare
with others, install them first (e.g. ``pip install python-gdcm pylibjpeg-libjpeg``),
run this, and uninstall them again.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.pixels.decoders.base import get_decoder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pacs_node.dicom import codecs  # noqa: E402 - registers the node's JPEG plugin

ARCHIVE = ROOT.parent / "shared" / "data" / "ct_transfer_syntaxes.tar.xz"
REFERENCE = "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm"


def _time_ms(path: Path, plugin: str, repeat: int) -> tuple[float, np.ndarray]:
    times, values = [], None
    for _ in range(repeat):
        ds = pydicom.dcmread(path)
        started = time.perf_counter()
        stored = ds.pixel_array if plugin == "native" else pixel_array(ds, decoding_plugin=plugin)
        times.append((time.perf_counter() - started) * 1000)
        values = apply_modality_lut(stored, ds)
    assert values is not None
    return statistics.median(times), np.asarray(values, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    codecs.register()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(tmp, filter="data")
        folder = Path(tmp) / "ct_transfer_syntaxes"
        reference = _time_ms(folder / REFERENCE, "native", 1)[1]
        for path in sorted(folder.glob("CTImage.dcm_*")):
            syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            plugins = ["native"]
            if syntax.is_compressed:
                try:
                    plugins = list(get_decoder(syntax).available_plugins)
                except NotImplementedError:  # a retired syntax: no decoder at all
                    plugins = []
            row = {"transfer_syntax": str(syntax), "name": syntax.name,
                   "accepted_by_node": codecs.decodable(syntax), "plugins": {}}  # fmt: skip
            for plugin in plugins:
                try:
                    median_ms, values = _time_ms(path, plugin, args.repeat)
                except Exception as exc:  # noqa: BLE001 - a plugin's refusal is a result
                    row["plugins"][plugin] = {"error": str(exc).splitlines()[-1][:160]}
                    continue
                error = np.abs(values - reference)
                row["plugins"][plugin] = {
                    "median_ms": round(median_ms, 2),
                    "max_abs_hu_error": round(float(error.max()), 2),
                    "mean_abs_hu_error": round(float(error.mean()), 3),
                }
            rows.append(row)
    report = {
        "command": "python bench/codecs.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "repeat": args.repeat,
        "slice": "GE HiSpeed CT/i chest, 512 x 512, 16 bits allocated",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        for plugin, result in row["plugins"].items():
            print(f"{row['name'][:48]:48s} {plugin:22s} {result}")


if __name__ == "__main__":
    main()
