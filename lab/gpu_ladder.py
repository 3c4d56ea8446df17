"""Train several blind CT denoisers side by side on one GPU within a wall-clock budget.

A lent GPU machine has PyTorch but neither the data archives nor the node's stack (pydicom,
pydantic, typer), so this driver needs only the library: it reads a set written by
``pacs-lab export-training-set``, fills the noise bank once (shared through its cache),
then trains one residual U-Net per width in its own process, each fitting its steps into
what is left of the budget::

    python -m lab.gpu_ladder var/gpu/training-set.npz OUT --budget 420 --features 16 12 8

``--fine-tune CARD`` adds a run that starts from a shipped network (same name and
arguments, ``--fine-tune-learning-rate``). ``--patch-sampling device`` cuts the patches on
the GPU (``models.train.DevicePatchSampler``), so the GPU stops waiting for the CPU. Side by
side, every run waits for the others before timing its steps; processes on one GPU take
turns, though, and on an H200 the runs then trained 2-3 times slower than timed (their
schedules were cut short), so ``--one-at-a-time`` trains them one after the other, each
timed alone with an equal share of the time left.

Each run writes ``<OUT>/<name>.{json,safetensors}`` (``ct-denoise-resunet-f<N>`` for a
width) and a log (in ``--logs``, by default ``OUT``).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import shlex
import sys
import threading
import time
from pathlib import Path

from lab.blind import load_training_set, train_blind
from lab.noise import TRAINING, noise_bank
from models.checkpoint import read_card
from models.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Run:
    """One network of the ladder: a width trained from scratch, or a card fine-tuned."""

    name: str
    features: int
    learning_rate: float
    init_from: Path | None = None


def _config(args: argparse.Namespace, run: Run) -> TrainConfig:
    return TrainConfig(
        steps=1, batch_size=args.batch_size, patch=args.patch, learning_rate=run.learning_rate,
        seed=args.seed, sampling="slice", noise_scale=(0.8, 1.25), save_every=10**9,
        patch_sampling=args.patch_sampling, recorrupt_alpha=args.recorrupt_alpha,
    )  # fmt: skip


def _runs(args: argparse.Namespace) -> list[Run]:
    runs = [
        Run(f"ct-denoise-resunet-f{features}", features, args.learning_rate)
        for features in args.features
    ]
    for card_path in args.fine_tune:
        card = read_card(card_path)
        if card.architecture != "resunet" or card.arch_kwargs.get("in_channels") != 1:
            raise SystemExit(f"{card_path}: only 2D residual U-Nets (resunet) are fine-tuned here")
        runs.append(Run(card.name, int(card.arch_kwargs["features"]),
                        args.fine_tune_learning_rate, card_path))  # fmt: skip
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise SystemExit(f"two runs would write the same card: {names}")
    return runs


def _train_one(
    args: argparse.Namespace, run: Run, budget_s: float, command: str, barrier: object
) -> None:
    name, features = run.name, run.features
    with (args.logs / f"{name}.log").open("w") as log_file:

        def log(message: str) -> None:
            print(message, file=log_file, flush=True)

        started = time.perf_counter()

        def on_step(step: int, total: int, loss_hu: float) -> None:
            if step % 500 == 0 or step == total:
                seconds = time.perf_counter() - started
                log(f"step {step}/{total}  L1 {loss_hu:.2f} HU  {seconds:.0f} s")

        arch_kwargs = (
            read_card(run.init_from).arch_kwargs
            if run.init_from is not None
            else {"in_channels": 1, "features": features, "depth": 4}
        )

        def wait_for_the_others() -> None:
            try:
                barrier.wait()  # type: ignore[attr-defined]
            except threading.BrokenBarrierError:
                log("another run failed or was late: timing the steps without it")

        try:
            card = train_blind(
            load_training_set(args.training_set), args.output, name=name, version=args.version,
            architecture="resunet", arch_kwargs=arch_kwargs,
            description=f"Blind residual U-Net ({features} features) for CT: fan-beam noise "
            "of 8-110 HU over two scanner geometries and smooth-to-sharp kernels",
            config=_config(args, run), command=command, draws=args.draws,
            cache_dir=args.noise_cache, on_step=on_step, log=log, device=args.device,
            time_budget_s=budget_s, init_from=run.init_from, before_timing=wait_for_the_others,
            )  # fmt: skip
        except BaseException as exc:
            barrier.abort()  # type: ignore[attr-defined] # the others stop waiting for this run
            log(f"failed: {exc!r}")
            raise
        log(f"wrote {card}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("training_set", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--budget", type=float, required=True, help="seconds for everything")
    parser.add_argument("--features", type=int, nargs="*", default=[16, 12, 8])
    parser.add_argument(
        "--fine-tune",
        type=Path,
        nargs="*",
        default=[],
        metavar="CARD",
        help="also fine-tune these shipped networks (model cards)",
    )
    parser.add_argument("--fine-tune-learning-rate", type=float, default=3e-4)
    parser.add_argument("--patch-sampling", choices=["host", "device"], default="host")
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="train the runs one after the other, each with an equal share of the time left "
        "(processes sharing one GPU take turns, and a run timed beside others misjudges "
        "its pace)",
    )
    parser.add_argument(
        "--recorrupt-alpha",
        type=float,
        default=0.0,
        help="Recorrupted-to-Recorrupted against the references' own noise "
        "(lab.native_noise): input + alpha z, target - z / alpha; 0: off",
    )
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
    runs = _runs(args)
    if not runs:
        raise SystemExit("nothing to train: give --features or --fine-tune")
    for folder in (args.output, args.logs):
        folder.mkdir(parents=True, exist_ok=True)
    training_set = load_training_set(args.training_set)
    noise_bank(training_set.images, training_set.spacings, TRAINING, args.draws, args.seed,
               args.noise_cache, lambda _: None, args.device)  # fmt: skip
    left = args.budget - (time.monotonic() - started)
    print(f"noise bank: {time.monotonic() - started:.0f} s; {left:.0f} s left", flush=True)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    workers = []
    if args.one_at_a_time:
        for index, run in enumerate(runs):
            share = (args.budget - (time.monotonic() - started)) / (len(runs) - index)
            alone = context.Barrier(1)
            worker = context.Process(target=_train_one, args=(args, run, share, command, alone))
            worker.start()
            worker.join()
            workers.append(worker)
    else:
        # A run that fails before the barrier breaks it, so the others do not wait forever.
        barrier = context.Barrier(len(runs), timeout=max(60.0, left / 4))
        workers = [
            context.Process(target=_train_one, args=(args, run, left, command, barrier))
            for run in runs
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    failed = [run.name for run, w in zip(runs, workers, strict=True) if w.exitcode != 0]
    for run in runs:
        log = args.logs / f"{run.name}.log"
        lines = log.read_text().splitlines() if log.is_file() else ["(no log)"]
        print(f"{run.name}: " + " | ".join(lines[-3:]), flush=True)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
