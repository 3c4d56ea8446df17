"""What each CPU execution option does to the default preset's time and output.

Usage::

    python bench/cpu_options.py --slices 8 --out bench/results/cpu-options-2cores.json

One synthetic 512 x 512 CT volume (water cylinder with inserts, noise σ 30 HU) through
``ct-denoise`` with the inference engine's options varied one at a time (batch size,
channels-last, threads, ``torch.compile``), and through ONNX Runtime (CPU execution
provider) where it is installed (``pip install onnx onnxruntime``; not a dependency of the
node). Each configuration runs once to warm up and is then timed over ``--repeats`` runs
(the median is reported); its output is compared with the default configuration's
(largest and mean absolute difference in HU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.engine import EngineOptions, NetworkEnhancer  # noqa: E402
from models.registry import ModelRegistry, load_presets  # noqa: E402
from pacs_node.settings import ModelSettings  # noqa: E402
from tests.helpers.synthetic import make_ct_series  # noqa: E402

Run = Callable[[np.ndarray], np.ndarray]


def _volume(slices: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    datasets = make_ct_series(None, n_slices=slices, rows=512, cols=512, noise_hu=30.0)
    values = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                       for ds in datasets]).astype(np.float32)  # fmt: skip
    return values, (2.5, 0.7, 0.7)


def _timed(run: Run, volume: np.ndarray, repeats: int) -> tuple[float, float, np.ndarray]:
    started = time.perf_counter()
    out = run(volume)  # warm-up (compilation, allocation)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        begun = time.perf_counter()
        out = run(volume)
        times.append(time.perf_counter() - begun)
    return first, statistics.median(times), out


def _onnx_run(enhancer: NetworkEnhancer, work: Path, threads: int) -> Run | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    network = enhancer.network.to(memory_format=torch.contiguous_format).eval()
    channels = int(enhancer.card.arch_kwargs.get("in_channels", 1))
    path = work / "model.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(network, (torch.zeros(1, channels, 512, 512),), str(path),
                      input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": axes, "y": axes})  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    class OnnxNetwork(torch.nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            result = session.run(["y"], {"x": batch.contiguous().numpy()})[0]
            return torch.from_numpy(result)

    onnx_enhancer = NetworkEnhancer(OnnxNetwork(), enhancer.card,
                                    replace(enhancer.options, channels_last=False))  # fmt: skip
    return lambda v: onnx_enhancer(v, (2.5, 0.7, 0.7))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="ct-denoise")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    volume, spacing = _volume(args.slices)
    preset = load_presets(ModelSettings().presets_path)[args.preset]
    assert preset.model is not None
    registry = ModelRegistry()
    base = EngineOptions(device="cpu")

    def enhancer_run(options: EngineOptions) -> Run:
        network, card = registry.load(preset.model or "", device="cpu")
        enhancer = NetworkEnhancer(network, card, options)
        return lambda v: enhancer(v, spacing)[0]

    configs: dict[str, Callable[[], Run | None]] = {
        "default (batch 8, channels-last, BatchNorm folded, all threads)": lambda: enhancer_run(
            base
        ),
        "BatchNorm not folded": lambda: enhancer_run(replace(base, fold_batch_norm=False)),
        "batch 1": lambda: enhancer_run(replace(base, batch_size=1)),
        "batch 4": lambda: enhancer_run(replace(base, batch_size=4)),
        "no channels-last": lambda: enhancer_run(replace(base, channels_last=False)),
        "torch.compile": lambda: enhancer_run(replace(base, compile=True)),
    }
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    with tempfile.TemporaryDirectory() as tmp:
        network, card = registry.load(preset.model, device="cpu")
        plain = NetworkEnhancer(network, card, replace(base, channels_last=False))
        configs["ONNX Runtime (CPU provider)"] = lambda: _onnx_run(plain, Path(tmp), threads)
        for name, make in configs.items():
            for thread_count in [threads, 1] if name.startswith("default") else [threads]:
                torch.set_num_threads(thread_count)
                run = make()
                if run is None:
                    rows.append({"config": name, "skipped": "onnxruntime is not installed"})
                    continue
                first, median, out = _timed(run, volume, args.repeats)
                if reference is None:
                    reference = out
                diff = np.abs(out.astype(np.float64) - reference)
                label = name if thread_count == threads else f"{name}, 1 thread"
                row = {"config": label, "threads": thread_count, "first_run_s": first,
                       "seconds_per_slice": median / args.slices,
                       "max_abs_diff_hu": float(diff.max()),
                       "mean_abs_diff_hu": float(diff.mean())}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        torch.set_num_threads(threads)
    report = {
        "command": "python bench/cpu_options.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{threads} cores, {platform.processor() or platform.machine()}",
        "torch": torch.__version__, "preset": args.preset, "model": preset.model,
        "slices": args.slices, "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
