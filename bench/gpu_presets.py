"""GPU benchmark: seconds per 512-slice volume for each network preset, in each precision,
with the fraction of the GPU's peak and the precision's effect on the output in HU.

Usage (on a machine with a CUDA GPU; needs PyTorch, numpy, safetensors, PyYAML only):
    python bench/gpu_presets.py --out bench/results/gpu-h200.json \\
        --real var/gpu/training-set.npz --slices 512

Precisions (``models.precision``): ``bf16`` (bf16 autocast), ``tf32`` (float32 with
TensorFloat-32 convolutions, PyTorch's default for cuDNN) and ``fp32`` (float32
throughout, the node's default). For each preset and precision:

- the whole engine on a synthetic 512 x 512 CT-like volume (``bench_presets.phantom``),
  after one warm-up volume, with the node's tile size (512) and the device-resident path
  (``EngineOptions.resident``), and the host path for comparison;
- the network alone on a batch already on the GPU (what the engine adds is the rest), its
  FLOPs counted by PyTorch's FLOP counter, against the measured dense matrix-product rate
  of the same precision;
- the output on real slices (``--real``: a set from ``pacs-lab export-training-set``, used
  only as realistic input, not as a quality figure) against float32 on the CPU: the largest,
  99th-percentile and mean absolute difference, and the mean difference (bias) inside
  the body, HU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_presets import phantom  # noqa: E402

from models.engine import EngineOptions, NetworkEnhancer  # noqa: E402
from models.registry import ModelRegistry, build_enhancer, load_presets  # noqa: E402

PRECISIONS = ("bf16", "tf32", "fp32")
SPACING = (1.0, 0.7, 0.7)
# "cpu" only to try the script without a GPU (--try-on-cpu): the figures then mean nothing.
DEVICE = "cuda"


def _synchronise() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _set_precision(precision: str) -> EngineOptions:
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return EngineOptions(device=DEVICE, precision=precision, tile_size=512)  # type: ignore[arg-type]


def _synchronised(run: object) -> float:
    _synchronise()
    started = time.perf_counter()
    run()  # type: ignore[operator]
    _synchronise()
    return time.perf_counter() - started


def _matmul_rate(precision: str) -> float:
    """Dense matrix-product TFLOP/s of this precision (n³, n = 8192 on a GPU, mean of 10
    after 3)."""
    _set_precision(precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 8192 if DEVICE == "cuda" else 256
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = _synchronised(lambda: [a @ b for _ in range(10)])
    return 10 * 2 * n**3 / seconds / 1e12


def _network_alone(enhancer: NetworkEnhancer, precision: str, batch: int) -> dict[str, float]:
    card = enhancer.card
    x = torch.rand(batch, card.context_slices, 512, 512, device=DEVICE)
    x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16")
    network = enhancer.network
    with torch.inference_mode(), autocast:
        counter = FlopCounterMode(display=False)
        with counter:
            network(x[:1])
        flops = counter.get_total_flops()
        for _ in range(2):
            network(x)
        seconds = _synchronised(lambda: [network(x) for _ in range(5)]) / (5 * batch)
    return {"network_s_per_slice": seconds, "gflop_per_slice": flops / 1e9,
            "network_tflops": flops / seconds / 1e12}  # fmt: skip


def _differences(gpu: np.ndarray, cpu: np.ndarray, body: np.ndarray) -> dict[str, float]:
    delta = (gpu.astype(np.float64) - cpu)[body]
    return {
        "max_abs_hu": float(np.abs(delta).max()),
        "p99_abs_hu": float(np.percentile(np.abs(delta), 99)),
        "mean_abs_hu": float(np.abs(delta).mean()),
        "bias_hu": float(delta.mean()),
    }


def _real_slices(path: Path | None, count: int) -> list[np.ndarray]:
    if path is None:
        return []
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data["header"]))
        real = [i for i, n in enumerate(header["names"]) if not n.startswith("phantom/")]
        picks = real[:: max(1, len(real) // count)][:count]
        return [data[f"image_{i:04d}"].astype(np.float32) for i in picks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--presets", nargs="*", default=["ct-denoise", "ct-denoise-fast", "ct-sr2x", "ct-diffusion"]
    )
    parser.add_argument(
        "--full-sampler",
        action="store_true",
        help="also time ct-diffusion's full sampler (all trained levels)",
    )
    parser.add_argument("--real", type=Path, help="training-set .npz for the fidelity check")
    parser.add_argument("--real-slices", type=int, default=12)
    parser.add_argument(
        "--try-on-cpu",
        action="store_true",
        help="run every step on the CPU (tries the script; no figures)",
    )
    args = parser.parse_args()
    global DEVICE
    if args.try_on_cpu:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    presets = load_presets(ROOT / "configs" / "presets.yaml")
    cases = [(name, presets[name]) for name in args.presets]
    if args.full_sampler:
        full = dataclasses.replace(presets["ct-diffusion"], parameters={})
        cases.append(("ct-diffusion (full sampler)", full))
    registry = ModelRegistry()
    volume = phantom(args.slices)
    warmup = phantom(8, seed=1)
    real = _real_slices(args.real, args.real_slices)
    peaks = {precision: _matmul_rate(precision) for precision in PRECISIONS}
    print(json.dumps({"matmul_tflops": peaks}), flush=True)
    results = []
    for name, preset in cases:
        cpu = build_enhancer(preset, registry, EngineOptions(device="cpu", tile_size=512))
        references = [cpu(image[None], SPACING)[0] for image in real]
        for precision in PRECISIONS:
            options = _set_precision(precision)
            options = dataclasses.replace(options, batch_size=args.batch_size)
            row: dict[str, object] = {"preset": name, "precision": precision}
            # The host path (slice batches copied in and out) in bf16 only: it shows what
            # the resident path gained.
            for resident in (True, False) if precision == "bf16" else (True,):
                enhancer = build_enhancer(
                    preset, registry, dataclasses.replace(options, resident=resident)
                )
                assert isinstance(enhancer, NetworkEnhancer)
                enhancer(warmup, SPACING)
                key = "resident" if resident else "host"
                seconds = _synchronised(lambda e=enhancer: e(volume, SPACING))
                row[f"seconds_volume_{key}"] = round(seconds, 3)
                row["model"] = f"{enhancer.info.name} {enhancer.info.version}"
            row.update({k: round(v, 5) for k, v in
                        _network_alone(enhancer, precision, args.batch_size).items()})  # fmt: skip
            row["fraction_of_matmul_peak"] = round(
                float(row["network_tflops"]) / peaks[precision],
                4,  # type: ignore[arg-type]
            )
            if real:
                outputs = [enhancer(image[None], SPACING)[0] for image in real]
                scale = enhancer.card.scale_factor
                bodies = [
                    (image > -500).repeat(scale, axis=0).repeat(scale, axis=1)[None]
                    for image in real
                ]
                row["vs_cpu_fp32"] = _differences(
                    np.concatenate([o.ravel() for o in outputs]),
                    np.concatenate([r.ravel() for r in references]),
                    np.concatenate([b.ravel() for b in bodies]),
                )
                row["vs_cpu_fp32"]["slices"] = len(real)  # type: ignore[index]
            results.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/gpu_presets.py " + " ".join(sys.argv[1:]),
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "slices": args.slices,
        "slice_size": [512, 512],
        "batch_size": args.batch_size,
        "matmul_tflops": peaks,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
