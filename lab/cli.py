"""The ``pacs-lab`` command (an entry point): train, evaluate, compare."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console

from pacs_node.errors import ConfigError, EnhancementError

if TYPE_CHECKING:  # the node's settings (pydantic) load only for commands that need them,
    # so training runs on a machine that has PyTorch and typer but not the node's stack
    from pacs_node.settings import Settings

app = typer.Typer(
    help="PACS Enhancement Node research commands: train, evaluate and compare networks.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML overlay on configs/default.yaml", exists=True),
]


def _settings(config: Path | None) -> Settings:
    from pacs_node.settings import load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def train(
    mode: Annotated[
        str, typer.Argument(help="denoise, noise2noise, diffusion or super_resolution")
    ],
    name: Annotated[str, typer.Option(help="model card name")],
    architecture: Annotated[str, typer.Option(help="zoo architecture, e.g. dncnn")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="DICOM folder or .tar.xz archive (MR may train on phantoms alone)", exists=True
        ),
    ] = None,
    arch_kwargs: Annotated[str, typer.Option(help="JSON constructor arguments")] = "{}",
    context_slices: Annotated[int, typer.Option(help="1 = 2D, 3 = 2.5D")] = 1,
    version: Annotated[str, typer.Option()] = "0.1.0",
    modality: Annotated[str, typer.Option()] = "CT",
    description: Annotated[str, typer.Option()] = "",
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    patch: Annotated[int, typer.Option(min=16)] = 64,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    noise: Annotated[str, typer.Option(help="image or projection (simulated low dose)")] = "image",
    phantoms: Annotated[
        int, typer.Option(help="training phantoms to add (MR: brain-like MR phantoms)", min=0)
    ] = 0,
    noise_draws: Annotated[int, typer.Option(help="simulated draws per slice", min=1)] = 2,
    noise_sigma_hu: Annotated[float, typer.Option(help="added σ of the simulation")] = 20.0,
    output: Annotated[Path, typer.Option(help="folder for the checkpoint")] = Path(
        "models/weights"
    ),
    tensorboard: Annotated[
        Path | None, typer.Option(help="write TensorBoard loss curves to this folder")
    ] = None,
    noise_cache: Annotated[
        Path, typer.Option(help="folder keeping simulated noise banks between runs")
    ] = Path("var/cache/noise-bank"),
    sampling: Annotated[
        str, typer.Option(help="volume (each volume equally likely) or slice (each slice)")
    ] = "volume",
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="model card (.json) whose verified weights start the network: the same "
            "architecture, or a DnCNN for a cold diffusion with restorer 'dncnn'",
            exists=True,
        ),
    ] = None,
) -> None:
    """Train a zoo network and write its checkpoint and model card (with held-out metrics)."""
    import shlex
    import sys

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from lab.training import train_model
    from models.train import TrainConfig

    if mode not in ("denoise", "noise2noise", "diffusion", "super_resolution"):
        console.print("[red]mode must be denoise, noise2noise, diffusion or super_resolution[/red]")
        raise typer.Exit(2)
    if data is None and not (modality.upper() == "MR" and phantoms):
        console.print("[red]--data is required (MR alone may train on --phantoms)[/red]")
        raise typer.Exit(2)
    if sampling not in ("volume", "slice"):
        console.print("[red]--sampling must be volume or slice[/red]")
        raise typer.Exit(2)
    config = TrainConfig(
        steps=steps, batch_size=batch_size, patch=patch, learning_rate=learning_rate, seed=seed,
        sampling=sampling,  # type: ignore[arg-type]
    )  # fmt: skip
    command = "pacs-lab " + shlex.join(sys.argv[1:])
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"training {name}", total=steps, loss="")

        def on_step(step: int, total: int, loss_hu: float) -> None:
            bar.update(task, completed=step, loss=f"L1 {loss_hu:.2f} HU")

        try:
            card = train_model(
                data, output, name=name, version=version, mode=mode,  # type: ignore[arg-type]
                architecture=architecture, arch_kwargs=json.loads(arch_kwargs),
                context_slices=context_slices, modality=modality, description=description,
                config=config, command=command, noise=noise, phantoms=phantoms,
                noise_draws=noise_draws, noise_sigma_hu=noise_sigma_hu, on_step=on_step,
                log=console.print, log_dir=tensorboard, noise_cache=noise_cache,
                init_from=init_from,
            )  # fmt: skip
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    console.print(f"wrote {card}")
    console.print_json(card.read_text())


@app.command("export-training-set")
def export_training_set(
    output: Annotated[Path, typer.Argument(help=".npz file to write")],
    data_dir: Annotated[
        Path, typer.Option(help="folder holding the archives of lab/manifests/ct.json", exists=True)
    ] = Path("../shared/data"),
    phantoms: Annotated[int, typer.Option(min=0, help="low-contrast phantoms to add")] = 12,
) -> None:
    """Write the blind denoiser's training slices (the manifest's training patients, plus
    phantoms) to one file, for `train-blind --training-set` on a machine without the data."""
    from lab.blind import save_training_set, training_images

    try:
        written = save_training_set(training_images(data_dir, phantoms), output)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")


def _objective(value: str) -> Literal["denoise", "diffusion"]:
    if value == "denoise":
        return "denoise"
    if value == "diffusion":
        return "diffusion"
    raise ValueError(f"--objective must be denoise or diffusion, got {value!r}")


@app.command("train-blind")
def train_blind_command(
    name: Annotated[str, typer.Option(help="model card name")],
    architecture: Annotated[str, typer.Option(help="zoo architecture, e.g. resunet")],
    data_dir: Annotated[
        Path, typer.Option(help="folder holding the archives of lab/manifests/ct.json")
    ] = Path("../shared/data"),
    training_set: Annotated[
        Path | None,
        typer.Option(
            help="train on a set from export-training-set instead of --data-dir",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    arch_kwargs: Annotated[str, typer.Option(help="JSON constructor arguments")] = "{}",
    version: Annotated[str, typer.Option()] = "0.1.0",
    description: Annotated[str, typer.Option()] = "",
    steps: Annotated[int, typer.Option(min=1)] = 10000,
    time_budget: Annotated[
        float | None,
        typer.Option(min=1, help="seconds: train as many steps as fit (replaces --steps)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    patch: Annotated[int, typer.Option(min=16)] = 96,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    phantoms: Annotated[int, typer.Option(min=0, help="low-contrast phantoms to add")] = 12,
    noise_draws: Annotated[
        int,
        typer.Option(
            min=0,
            help="fan-beam draws per slice; 0: image-domain CT-like noise "
            "(--sigma-hu, --noise-cutoff) instead of a fan-beam bank",
        ),
    ] = 6,
    sigma_hu: Annotated[
        tuple[float, float], typer.Option(help="image-domain noise σ range (HU)")
    ] = (10.0, 50.0),
    noise_cutoff: Annotated[
        tuple[float, float],
        typer.Option(help="image-domain noise texture cut-off range (cycles per pixel)"),
    ] = (0.5, 0.5),
    recorrupt_alpha: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Recorrupted-to-Recorrupted against the references' own "
            "noise (lab.native_noise): input + alpha z, target - z / alpha; 0: off",
        ),
    ] = 0.0,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
    output: Annotated[Path, typer.Option(help="folder for the checkpoint")] = Path(
        "models/weights"
    ),
    noise_cache: Annotated[
        Path, typer.Option(help="folder keeping simulated noise between runs")
    ] = Path("var/cache/noise-bank"),
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="model card (.json) whose verified weights start the network "
            "(fine-tuning: the same architecture and arguments)",
            exists=True,
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="denoise, or diffusion (a cold_diffusion network, e.g. with a resunet "
            "restorer started from a blind ResUNet by --init-from)"
        ),
    ] = "denoise",
) -> None:
    """Train a blind 2D CT denoiser (or conditional cold diffusion) on the manifest's
    training patients with fan-beam noise of σ 8-110 HU (resumable: a stopped run continues
    from its last saved state)."""
    import shlex
    import sys

    from lab.blind import load_training_set, train_blind, training_images
    from models.train import TrainConfig

    config = TrainConfig(
        steps=steps, batch_size=batch_size, patch=patch, learning_rate=learning_rate, seed=seed,
        sampling="slice", noise_scale=(0.8, 1.25), sigma_hu=sigma_hu, noise_cutoff=noise_cutoff,
        recorrupt_alpha=recorrupt_alpha,
    )  # fmt: skip
    command = "pacs-lab " + shlex.join(sys.argv[1:])
    started = time.perf_counter()

    def on_step(step: int, total: int, loss_hu: float) -> None:
        if step % 250 == 0 or step == total:
            elapsed = time.perf_counter() - started
            console.print(f"step {step}/{total}  L1 {loss_hu:.2f} HU  {elapsed:.0f} s")

    try:
        if training_set is not None:
            images = load_training_set(training_set)
        elif not data_dir.is_dir():
            raise FileNotFoundError(f"{data_dir} does not exist (give --data-dir or "
                                    "--training-set)")  # fmt: skip
        else:
            images = training_images(data_dir, phantoms)
        card = train_blind(
            images, output, name=name, version=version, architecture=architecture,
            arch_kwargs=json.loads(arch_kwargs), description=description, config=config,
            command=command, draws=noise_draws, cache_dir=noise_cache, on_step=on_step,
            log=console.print, device=device, time_budget_s=time_budget, init_from=init_from,
            objective=_objective(objective),
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"wrote {card}")


@app.command()
def evaluate(
    data: Annotated[
        Path | None, typer.Option(help="real CT (folder or .tar.xz); its last quarter is held out")
    ] = None,
    preset: Annotated[list[str] | None, typer.Option(help="network preset(s) to evaluate")] = None,
    sr_preset: Annotated[list[str] | None, typer.Option(help="x2 SR preset(s) to evaluate")] = None,
    output: Annotated[Path, typer.Option(help="report folder")] = Path("docs/evaluation"),
    seed: Annotated[int, typer.Option()] = 7,
    split: Annotated[
        str, typer.Option(help="test (the report) or validation (for choosing recipes)")
    ] = "test",
    bias_draws: Annotated[
        int, typer.Option(min=1, help="noise draws per phantom averaged for the HU bias")
    ] = 8,
    config: ConfigOption = None,
) -> None:
    """Evaluate presets against baselines on phantoms and held-out CT: CSV, Markdown, PNG."""
    import shlex
    import sys

    from lab.evaluation import EvaluationConfig, run_evaluation

    settings = _settings(config)
    command = "pacs-lab " + shlex.join(sys.argv[1:])
    try:
        evaluation_config = EvaluationConfig(seed=seed, split=split, bias_draws=bias_draws)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    try:
        report = run_evaluation(
            settings, data, preset or [settings.preset], output, evaluation_config,
            command, log=console.print, sr_presets=sr_preset or [],
        )  # fmt: skip
    except EnhancementError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"wrote {report}")


@app.command()
def compare(
    data: Annotated[
        Path,
        typer.Option(help="real CT (folder or .tar.xz); its last quarter is held out", exists=True),
    ],
    architecture: Annotated[
        list[str] | None,
        typer.Option(help="architectures to compare (default: dncnn and the autoencoders)"),
    ] = None,
    steps: Annotated[int, typer.Option(min=1)] = 1500,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    patch: Annotated[int, typer.Option(min=16)] = 64,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    noise: Annotated[str, typer.Option(help="image or projection")] = "projection",
    phantoms: Annotated[int, typer.Option(min=0, help="training phantoms to add")] = 0,
    noise_draws: Annotated[int, typer.Option(min=1)] = 2,
    noise_sigma_hu: Annotated[float, typer.Option()] = 15.0,
    work_dir: Annotated[Path, typer.Option(help="where the compared checkpoints are kept")] = Path(
        "var/comparison"
    ),
    output: Annotated[Path, typer.Option(help="report folder")] = Path("docs/evaluation"),
    noise_cache: Annotated[Path, typer.Option()] = Path("var/cache/noise-bank"),
) -> None:
    """Train architectures alike (the autoencoder family by default) and tabulate them."""
    import shlex
    import sys

    from lab.comparison import AUTOENCODER_FAMILY, TrainingRecipe, compare_architectures
    from models.train import TrainConfig

    known = {c.architecture: c for c in AUTOENCODER_FAMILY}
    wanted = architecture or list(known)
    unknown = [a for a in wanted if a not in known]
    if unknown:
        console.print(f"[red]unknown architecture(s) {unknown}; choose from {list(known)}[/red]")
        raise typer.Exit(2)
    if noise not in ("image", "projection"):
        console.print("[red]--noise must be image or projection[/red]")
        raise typer.Exit(2)
    recipe = TrainingRecipe(
        TrainConfig(steps=steps, batch_size=batch_size, patch=patch,
                    learning_rate=learning_rate, seed=seed),
        noise=noise, phantoms=phantoms, noise_draws=noise_draws, noise_sigma_hu=noise_sigma_hu,
    )  # fmt: skip
    command = "pacs-lab " + shlex.join(sys.argv[1:])
    try:
        report = compare_architectures(
            data, [known[a] for a in wanted], recipe, work_dir, output, command,
            noise_cache=noise_cache, log=console.print,
        )  # fmt: skip
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"wrote {report}")


@app.command("evaluate-ct")
def evaluate_ct(
    data_dir: Annotated[
        Path, typer.Option(help="folder holding the archives of lab/manifests/ct.json", exists=True)
    ] = Path("../shared/data"),
    split: Annotated[str, typer.Option(help="test (the report) or validation")] = "test",
    preset: Annotated[
        list[str] | None, typer.Option(help="preset(s) to evaluate (default: the configured one)")
    ] = None,
    card: Annotated[
        list[Path] | None,
        typer.Option(help="candidate model card(s) (.json, weights beside it)", exists=True),
    ] = None,
    levels: Annotated[
        list[float] | None, typer.Option(help="added noise σ in soft tissue, HU (20 40 70)")
    ] = None,
    phantoms: Annotated[int, typer.Option(min=0, help="low-contrast phantoms (seeds 9000+)")] = 6,
    bias_draws: Annotated[
        int, typer.Option(min=1, help="noise draws per phantom and level for the HU bias")
    ] = 4,
    max_slices_per_collection: Annotated[
        int | None, typer.Option(min=1, help="subsample evenly for a quick run (default: all)")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    output: Annotated[Path, typer.Option(help="report folder (Markdown beside it)")] = Path(
        "docs/evaluation/ct"
    ),
    bar_method: Annotated[
        str | None, typer.Option(help="method the bar is checked for (default: the first model)")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="folder keeping simulated noise and NLM / BM3D outputs between runs"),
    ] = Path("var/cache/ct-eval"),
    config: ConfigOption = None,
) -> None:
    """Evaluate blind CT denoisers on held-out patients at three noise levels (TESTING noise),
    with 95 % CIs per level and vendor/kernel group, phantoms and real low-dose slices."""
    import shlex
    import sys

    from lab.ct_eval import LEVELS_HU, CtEvalConfig
    from lab.ct_report import bar_checks, model_methods, run_ct_evaluation, write_ct_report
    from models.checkpoint import CheckpointError
    from models.engine import resolve_device

    settings = _settings(config)
    command = "pacs-lab " + shlex.join(sys.argv[1:])
    try:
        evaluation_config = CtEvalConfig(
            data_dir=data_dir, split=split,  # type: ignore[arg-type]
            levels_hu=tuple(levels or LEVELS_HU), phantoms=phantoms, bias_draws=bias_draws,
            max_slices_per_collection=max_slices_per_collection, seed=seed, bar_method=bar_method,
        )  # fmt: skip
        presets = preset if preset is not None or card else [settings.preset]
        models = model_methods(settings, presets or [], card or [])
        result = run_ct_evaluation(
            evaluation_config, models, command, log=console.print,
            device=resolve_device(settings.device).type, cache_dir=cache,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    except EnhancementError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    report = write_ct_report(result, output)
    checks = bar_checks(result)
    met = bool(checks) and all(check.passed for check in checks)
    console.print(f"wrote {report}; bar for {result.bar_method}: {'met' if met else 'missed'}")


@app.command("train-sr")
def train_sr_command(
    output: Annotated[Path, typer.Option(help="folder for the weights and the model card")],
    data_dir: Annotated[
        Path, typer.Option(help="folder holding the archives of lab/manifests/ct.json", exists=True)
    ] = Path("../shared/data"),
    name: Annotated[str, typer.Option()] = "ct-sr2x-edsr",
    version: Annotated[str, typer.Option()] = "0.2.0",
    steps: Annotated[int, typer.Option(min=1)] = 3000,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    patch: Annotated[int, typer.Option(min=16, help="HR patch side, even")] = 96,
    features: Annotated[int, typer.Option(min=1)] = 32,
    blocks: Annotated[int, typer.Option(min=0)] = 6,
    clamp_window: Annotated[
        int, typer.Option(min=0, help="0 or odd: input pixels whose range bounds the output")
    ] = 3,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train the ×2 CT super-resolution network on randomised degradations of the training
    patients' real slices (lab/sr.py)."""
    import shlex
    import sys

    from lab.sr import SrTrainConfig, train_sr, training_slices

    config = SrTrainConfig(features=features, num_blocks=blocks, clamp_window=clamp_window,
                           steps=steps, batch_size=batch_size, patch=patch, seed=seed)  # fmt: skip
    slices = training_slices(data_dir)
    card = train_sr(
        [s.hu for s in slices], config, name=name, version=version,
        command="pacs-lab " + shlex.join(sys.argv[1:]),
        data_note=f"lab/manifests/ct.json train split, normal dose: {len(slices)} slices "
        "(TCGA training patients and the Philips phantom study)",
        output=output, log=console.print,
    )  # fmt: skip
    console.print(f"wrote {card}")


@app.command("evaluate-sr")
def evaluate_sr_command(
    card: Annotated[Path, typer.Option(help="the candidate's model card", exists=True)],
    data_dir: Annotated[
        Path, typer.Option(help="folder holding the archives of lab/manifests/ct.json", exists=True)
    ] = Path("../shared/data"),
    split: Annotated[str, typer.Option(help="validation (choosing) or test (the report)")] = (
        "validation"
    ),
    linear_batches: Annotated[
        int, typer.Option(min=0, help="training batches the linear baseline is fitted on (0: none)")
    ] = 40,
    native_slices: Annotated[
        int, typer.Option(min=0, help="slices upscaled natively for the halo (evenly chosen)")
    ] = 12,
    seed: Annotated[int, typer.Option()] = 0,
    output: Annotated[Path, typer.Option(help="report folder")] = Path("docs/evaluation/sr"),
) -> None:
    """Evaluate a ×2 CT super-resolution card on held-out patients per degradation family
    against bicubic and a fitted linear filter, with the halo measure (lab/sr.py)."""
    import shlex
    import sys

    from lab import sr
    from models.checkpoint import read_card

    if split not in ("validation", "test"):
        console.print("[red]split must be validation or test[/red]")
        raise typer.Exit(2)
    kernel = None
    if linear_batches:
        pairs = sr.PatchPairs([s.hu for s in sr.training_slices(data_dir)], 96, seed)
        kernel = sr.fit_linear_filter(pairs, linear_batches)
    upscalers = sr.methods(card, kernel)
    slices = sr.evaluation_slices(data_dir, split)  # type: ignore[arg-type]
    rows = sr.evaluate(slices, upscalers, seed=seed)
    step = max(1, len(slices) // max(native_slices, 1))
    native = sr.native_halo(slices[::step][:native_slices], upscalers) if native_slices else []
    candidate = read_card(card).name
    summary = sr.summarise(rows, native, candidate)
    report = sr.write_report(
        output, split=split, command="pacs-lab " + shlex.join(sys.argv[1:]), candidate=candidate,
        rows=rows, native=native, summary=summary, linear_kernel=kernel,
    )  # fmt: skip
    console.print(report.read_text())


@app.command("validate-simulator")
def validate_simulator_command(
    data_dir: Annotated[
        Path, typer.Option(help="folder holding the archives of lab/manifests/ct.json", exists=True)
    ] = Path("../shared/data"),
    output: Annotated[Path, typer.Option(help="folder for the JSON and the figure")] = Path(
        "docs/evaluation/simulator"
    ),
) -> None:
    """Check the fan-beam simulator against the real low-mAs slices: NPS texture and noise
    level (see lab/validate_sim.py)."""
    from lab.validate_sim import validate

    summary = validate(data_dir, output)
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "checks"}))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
