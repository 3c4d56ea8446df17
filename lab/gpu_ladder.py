"""Train several blind CT denoisers side by side on one GPU within a wall-clock budget.

A lent GPU machine has PyTorch but neither the data archives nor the node's stack (pydicom,
pydantic, typer), so this driver needs only the library: it reads a set written by
``pacs-lab export-training-set``, fills the noise bank once (shared through its cache),
then trains one residual U-Net per width in its own process, each fitting its steps into
what is left of the budget::

    python -m lab.gpu_ladder var/gpu/training-set.npz OUT --budget 420 --features 16 12 8

Each run writes ``<OUT>/ct-denoise-resunet-f<N>.{json,safetensors}`` and a log (in
``--logs``, by default ``OUT``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import sys
import time
from pathlib import Path

from lab.blind import load_training_set, train_blind
from lab.noise import TRAINING, noise_bank
from models.train import TrainConfig


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=1, batch_size=args.batch_size, patch=args.patch, learning_rate=args.learning_rate,
        seed=args.seed, sampling="slice", noise_scale=(0.8, 1.25), save_every=10**9,
    )  # fmt: skip


def _train_one(args: argparse.Namespace, features: int, budget_s: float, command: str) -> None:
    name = f"ct-denoise-resunet-f{features}"
    with (args.logs / f"{name}.log").open("w") as log_file:

        def log(message: str) -> None:
            print(message, file=log_file, flush=True)

        started = time.perf_counter()

        def on_step(step: int, total: int, loss_hu: float) -> None:
            if step % 500 == 0 or step == total:
                seconds = time.perf_counter() - started
                log(f"step {step}/{total}  L1 {loss_hu:.2f} HU  {seconds:.0f} s")

        card = train_blind(
            load_training_set(args.training_set), args.output, name=name, version=args.version,
            architecture="resunet",
            arch_kwargs={"in_channels": 1, "features": features, "depth": 4},
            description=f"Blind residual U-Net ({features} features) for CT: fan-beam noise "
            "of 8-110 HU over two scanner geometries and smooth-to-sharp kernels",
            config=_config(args), command=command, draws=args.draws, cache_dir=args.noise_cache,
            on_step=on_step, log=log, device=args.device, time_budget_s=budget_s,
        )  # fmt: skip
        log(f"wrote {card}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("training_set", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--budget", type=float, required=True, help="seconds for everything")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 12, 8])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--draws", type=int, default=24, help="noise draws per slice")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="0.3.0")
    parser.add_argument("--noise-cache", type=Path, default=Path("/tmp/noise-bank"))
    parser.add_argument("--logs", type=Path, help="folder for the runs' logs (default: output)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    command = "python -m lab.gpu_ladder " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.logs = args.logs or args.output
    for folder in (args.output, args.logs):
        folder.mkdir(parents=True, exist_ok=True)
    training_set = load_training_set(args.training_set)
    noise_bank(training_set.images, training_set.spacings, TRAINING, args.draws, args.seed,
               args.noise_cache, lambda _: None, args.device)  # fmt: skip
    left = args.budget - (time.monotonic() - started)
    print(f"noise bank: {time.monotonic() - started:.0f} s; {left:.0f} s left", flush=True)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    workers = [
        context.Process(target=_train_one, args=(args, features, left, command))
        for features in args.features
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [f for f, w in zip(args.features, workers, strict=True) if w.exitcode != 0]
    for features in args.features:
        log = args.logs / f"ct-denoise-resunet-f{features}.log"
        lines = log.read_text().splitlines() if log.is_file() else ["(no log)"]
        print(f"f{features}: " + " | ".join(lines[-3:]), flush=True)
    if failed:
        print(f"failed: features {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
