"""`pacs-lab evaluate-ct` I/O: manifest slices and models in; bar, CSV, Markdown, figures out."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lab.ct_eval import (
    ALL_GROUPS,
    PAIRED_METRICS,
    CtEvalConfig,
    CtEvalResult,
    Method,
    Reference,
    baseline_methods,
    enhancer_method,
    evaluate_all,
    evaluation_phantoms,
    scan_field,
)
from lab.data import ARCHIVES, MANIFEST, SliceEntry, load_slices, read_manifest, select
from lab.noise import TESTING, TRAINING
from models.checkpoint import file_sha256, load_checkpoint
from models.engine import NetworkEnhancer
from models.metrics import SOFT_TISSUE_WINDOW
from models.report import comparison_figure, markdown_table, write_csv
from pacs_node.enhancers import EnhancerCache
from pacs_node.settings import Settings

BIAS_LIMIT_HU = 2.0
NLM_MARGIN_DB = 1.0
NOISE_REDUCTION_PCT = 50.0
NOISE_REDUCTION_FROM_HU = 40.0  # the noise-reduction point applies at this level and above
WINDOWS = (("psnr_full_db", "[-1024, 3072]"), ("psnr_soft_tissue_db", "[-160, 240]"))
SLICE_COLUMNS = (
    ("psnr_full_db", "PSNR full (dB)"),
    ("psnr_soft_tissue_db", "PSNR soft (dB)"),
    ("ssim_full", "SSIM full"),
    ("noise_sigma_hu", "σ residual (HU)"),
    ("noise_reduction_pct", "noise red. (%)"),
    ("bias_hu", "bias (HU)"),
    ("nps_mean_freq_shift_pct", "NPS f̄ shift (%)"),
)


def subsample(entries: Sequence[SliceEntry], per_collection: int | None) -> list[SliceEntry]:
    """At most ``per_collection`` entries of each collection, evenly spaced in member order
    (None: all)."""
    if per_collection is None:
        return list(entries)
    by_collection: dict[str, list[SliceEntry]] = {}
    for entry in entries:
        by_collection.setdefault(entry.collection, []).append(entry)
    kept = []
    for items in by_collection.values():
        items = sorted(items, key=lambda e: e.member)
        picks = np.unique(np.linspace(0, len(items) - 1, per_collection).round().astype(int))
        kept += [items[int(i)] for i in picks]
    return kept


def _references(entries: Sequence[SliceEntry], data_dir: Path) -> list[Reference]:
    return [
        Reference(f"{s.entry.collection}/{s.entry.member}", s.entry.group, s.hu, s.spacing_mm)
        for s in load_slices(entries, data_dir)
    ]


def model_methods(
    settings: Settings, presets: Sequence[str], cards: Sequence[Path]
) -> dict[str, Method]:
    """Blind methods of presets (through the node's registry, as the node runs them) and of
    candidate model cards (named ``<name>@<version>``, run with the settings' engine
    options).

    Raises
    ------
    ModelError
        An unknown preset or a missing or corrupt checkpoint of one.
    CheckpointError
        A card, or its weights, missing or corrupt.
    """
    cache = EnhancerCache(settings)
    methods = {name: enhancer_method(cache.get(name)) for name in presets}
    for path in cards:
        network, card = load_checkpoint(path)
        enhancer = NetworkEnhancer(network, card, cache.options)
        methods[f"{card.name}@{card.version}"] = enhancer_method(enhancer)
    return methods


def run_ct_evaluation(
    config: CtEvalConfig,
    models: Mapping[str, Method],
    command: str,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> CtEvalResult:
    """Load the split's slices from the manifest and evaluate them (:func:`evaluate_all`).

    Parameters
    ----------
    config : CtEvalConfig
        Data folder, split, levels, phantoms, subsampling, seed and bar method.
    models : mapping of str to Method
        The blind models, e.g. from :func:`model_methods`.
    command : str
        The command line, recorded in the report.
    log : callable
        Progress messages.
    device : str
        Where the fan-beam simulation runs.
    cache_dir : Path, optional
        Keeps simulated noise and baseline outputs between runs.

    Returns
    -------
    CtEvalResult
        With ``command`` and ``provenance`` (manifest and archive SHA-256, patient counts).

    Raises
    ------
    ValueError
        If an archive's file differs from the manifest, or the bar method is unknown.
    """
    entries = select(read_manifest(), config.split, low_dose=False)
    low_entries = select(read_manifest(), config.split, low_dose=True)
    entries = subsample(entries, config.max_slices_per_collection)
    low_entries = subsample(low_entries, config.max_slices_per_collection)
    references = _references(entries, config.data_dir)
    low_dose = _references(low_entries, config.data_dir)
    log(f"{len(references)} reference slices, {len(low_dose)} low-dose slices ({config.split})")
    phantoms = evaluation_phantoms(config.phantoms)
    result = evaluate_all(references, low_dose, phantoms, baseline_methods(), models, config,
                          TESTING, log, device, cache_dir)  # fmt: skip
    result.command = command
    collections = sorted({e.collection for e in [*entries, *low_entries]})
    result.provenance = {
        "manifest": str(MANIFEST.name),
        "manifest_sha256": file_sha256(MANIFEST),
        "data_sha256": {
            ARCHIVES[c]: file_sha256(config.data_dir / ARCHIVES[c]) for c in collections
        },
        "simulation_device": device,
        "patients": len({e.patient for e in entries}),
        "low_dose_patients": len({e.patient for e in low_entries}),
    }
    return result


@dataclass(frozen=True)
class BarCheck:
    """One point of the quality bar at one noise level and group.

    ``passed`` None: the point could not be measured (BM3D not installed, no phantoms).
    """

    level_hu: float
    group: str
    criterion: str
    passed: bool | None
    detail: str

    @property
    def verdict(self) -> str:
        """PASS, FAIL or N/A."""
        return "N/A" if self.passed is None else "PASS" if self.passed else "FAIL"


def _index(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    return {(r["level_hu"], r["group"], r["method"], r["metric"]): r for r in rows}


def _ci(cell: Mapping[str, Any]) -> str:
    if math.isnan(cell["half_width"]):
        return "CI n/a (n = 1)"
    return f"95 % CI [{cell['ci_low']:+.2f}, {cell['ci_high']:+.2f}]"


def _psnr_checks(result: CtEvalResult, level: float, group: str) -> list[BarCheck]:
    model, cells, paired = result.bar_method, _index(result.groups), _index(result.paired)
    checks = []
    for metric, window in WINDOWS:
        for baseline, margin, label in (
            ("nlm", NLM_MARGIN_DB, "≥ NLM + 1 dB"),
            ("bm3d", 0.0, "> BM3D"),
        ):
            criterion = f"PSNR {label}, window {window}"
            diff = paired.get((level, group, f"{model} - {baseline}", metric))
            if diff is None:
                why = "BM3D not installed" if baseline == "bm3d" else f"no {baseline} rows"
                checks.append(BarCheck(level, group, criterion, None, why))
                continue
            mine = cells[(level, group, model, metric)]["mean"]
            theirs = cells[(level, group, baseline, metric)]["mean"]
            mean, low = diff["mean"], diff["ci_low"]
            ok = mean >= margin if baseline == "nlm" else mean > margin
            bound = (
                ""
                if math.isnan(low)
                else f"; the CI's lower bound {'clears' if low >= margin else 'does not clear'} "
                f"{margin:+.0f} dB"
            )
            detail = (
                f"{mine:.2f} vs {theirs:.2f} dB, paired Δ {mean:+.2f} dB over {diff['n']} "
                f"slices, {_ci(diff)}{bound}"
            )
            checks.append(BarCheck(level, group, criterion, bool(ok), detail))
    return checks


def bar_checks(result: CtEvalResult) -> list[BarCheck]:
    """The quality bar for ``result.bar_method`` at every level and group.

    Per level and group (and all groups together): PSNR ≥ NLM + 1 dB and > BM3D at both
    windows (mean paired difference; the detail says whether the CI's lower bound clears
    it) and, at 40 HU and above, the soft-tissue noise σ reduced by ≥ 50 %. Per level on
    the phantoms: the worst |HU bias| over ROIs and phantoms (mean over the noise draws)
    ≤ 2 HU and the mean low-contrast CNR ratio ≥ 1. Without phantoms the bias point is
    checked on the slices' soft-tissue bias per group instead.

    Parameters
    ----------
    result : CtEvalResult
        The evaluation; ``result.bar_method`` is the method judged.

    Returns
    -------
    list of BarCheck
        In level order; empty when no model was evaluated.
    """
    model = result.bar_method
    if model is None:
        return []
    cells = _index(result.groups)
    groups = [ALL_GROUPS, *sorted({ref.group for ref in result.references})]
    checks: list[BarCheck] = []
    for level in result.config.levels_hu:
        for group in groups:
            if (level, group, model, "psnr_full_db") not in cells:
                continue
            checks += _psnr_checks(result, level, group)
            if level >= NOISE_REDUCTION_FROM_HU:
                cell = cells[(level, group, model, "noise_reduction_pct")]
                checks.append(
                    BarCheck(
                        level,
                        group,
                        "noise σ reduced by ≥ 50 % (soft tissue)",
                        bool(cell["mean"] >= NOISE_REDUCTION_PCT),
                        f"{cell['mean']:.2f} %, {_ci(cell)}",
                    )
                )
            if not result.phantom_rows:
                cell = cells[(level, group, model, "bias_hu")]
                checks.append(
                    BarCheck(
                        level,
                        group,
                        "|mean HU bias| ≤ 2 HU (slices, soft tissue)",
                        bool(abs(cell["mean"]) <= BIAS_LIMIT_HU),
                        f"{cell['mean']:+.2f} HU, {_ci(cell)}",
                    )
                )
        phantom = next(
            (p for p in result.phantoms if p["level_hu"] == level and p["method"] == model), None
        )
        if phantom is None:
            continue
        se = phantom["worst_bias_se_hu"]
        error = "" if math.isnan(se) else f" ± {se:.2f} (standard error)"
        checks.append(
            BarCheck(
                level,
                "phantoms",
                f"|mean HU bias| ≤ 2 HU (worst ROI of {phantom['phantoms']} phantoms, mean of "
                f"{phantom['draws']} draws)",
                bool(phantom["worst_abs_bias_hu"] <= BIAS_LIMIT_HU),
                f"{phantom['worst_bias_hu']:+.2f}{error} HU ({phantom['worst_bias_phantom']})",
            )
        )
        half = phantom["cnr_ratio_half_width"]
        spread = "CI n/a (1 phantom)" if math.isnan(half) else f"± {half:.2f} (95 % CI)"
        checks.append(
            BarCheck(
                level,
                "phantoms",
                "low-contrast CNR ratio ≥ 1 (no loss)",
                bool(phantom["cnr_ratio"] >= 1.0),
                f"{phantom['cnr_ratio']:.2f} {spread}",
            )
        )
    return checks


def _cell_text(cell: Mapping[str, Any] | None) -> str:
    if cell is None or math.isnan(cell["mean"]):
        return "n/a"
    if math.isnan(cell["half_width"]):
        return f"{cell['mean']:.2f}"
    return f"{cell['mean']:.2f} ± {cell['half_width']:.2f}"


def _slice_table(result: CtEvalResult, level: float, groups: Sequence[str]) -> str:
    cells = _index(result.groups)
    methods = list(dict.fromkeys(r["method"] for r in result.rows))
    table = []
    for group in groups:
        for method in methods:
            if (level, group, method, "psnr_full_db") not in cells:
                continue
            n = cells[(level, group, method, "psnr_full_db")]["n"]
            row: dict[str, Any] = {"group": group, "method": method, "n": n}
            for metric, title in SLICE_COLUMNS:
                row[title] = _cell_text(cells.get((level, group, method, metric)))
            row["s/slice"] = f"{cells[(level, group, method, 'seconds')]['mean']:.2f}"
            table.append(row)
    return markdown_table(
        table, ["group", "method", "n", *[t for _, t in SLICE_COLUMNS], "s/slice"]
    )


def _paired_table(result: CtEvalResult) -> str:
    cells = _index(result.paired)
    table = []
    for level, group, method, metric in cells:
        if metric != PAIRED_METRICS[0]:
            continue
        row: dict[str, Any] = {
            "level (HU)": f"{level:g}",
            "group": group,
            "comparison": method,
            "n": cells[(level, group, method, metric)]["n"],
        }
        for name, title in zip(
            PAIRED_METRICS, ("Δ PSNR full (dB)", "Δ PSNR soft (dB)", "Δ SSIM full"), strict=True
        ):
            cell = cells[(level, group, method, name)]
            ci = (
                "n/a"
                if math.isnan(cell["half_width"])
                else (f"[{cell['ci_low']:+.2f}, {cell['ci_high']:+.2f}]")
            )
            row[title] = f"{cell['mean']:+.2f} {ci}"
        table.append(row)
    table.sort(key=lambda r: (float(r["level (HU)"]), r["group"] != ALL_GROUPS, r["group"]))
    return markdown_table(table) if table else "(no model evaluated)\n"


def _mean_text(row: Mapping[str, Any], metric: str) -> str:
    return _cell_text({"mean": row[metric], "half_width": row[f"{metric}_half_width"]})


def _phantom_table(result: CtEvalResult) -> str:
    table = []
    for p in result.phantoms:
        se = "" if math.isnan(p["worst_bias_se_hu"]) else f" ± {p['worst_bias_se_hu']:.2f}"
        table.append(
            {
                "level (HU)": f"{p['level_hu']:g}",
                "method": p["method"],
                "phantoms": p["phantoms"],
                "draws": p["draws"],
                "worst bias (HU)": f"{p['worst_bias_hu']:+.2f}{se}",
                "CNR ratio": _mean_text(p, "cnr_ratio"),
                "noise red. (%)": _mean_text(p, "noise_reduction_pct"),
                "s/run": f"{p['seconds']:.2f}",
            }
        )
    return markdown_table(table) if table else "(no phantoms: `--phantoms 0`)\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "group"


def _figures(result: CtEvalResult, out_dir: Path) -> list[str]:
    """Before/after pages of each group's representative slice per level, and one page per
    real low-dose slice; returns the Markdown lines that show them."""
    figures, lines = out_dir / "figures", []
    by_name = {ref.name: ref for ref in result.references}
    psnr_of = {
        (r["slice"], r["level_hu"], r["method"]): r["psnr_soft_tissue_db"] for r in result.rows
    }
    best = result.bar_method or "nlm"
    for name in dict.fromkeys(key[0] for key in result.outputs):
        ref = by_name[name]
        for level in result.config.levels_hu:
            methods = [
                m
                for m in ("input", "nlm", "bm3d", *result.models)
                if (name, level, m) in result.outputs
            ]
            panels = [
                ("noisy" if m == "input" else m, result.outputs[(name, level, m)]) for m in methods
            ]
            notes = {
                ("noisy" if m == "input" else m): f"PSNR {psnr_of[(name, level, m)]:.2f} dB"
                for m in methods
            }
            difference = np.where(
                scan_field(ref.hu), result.outputs[(name, level, best)] - ref.hu, 0
            )
            panels += [("reference", ref.hu), (f"diff {best} - reference", difference)]
            notes["window"] = f"[-160, 240] HU; PSNR in that window; added σ {level:g} HU"
            path = figures / f"{_slug(ref.group)}-{level:g}hu.png"
            comparison_figure(
                path, panels, SOFT_TISSUE_WINDOW, notes, difference_half_width_hu=100.0
            )
            lines += [f"![{ref.group}, {level:g} HU]({out_dir.name}/figures/{path.name})", ""]
    for index, ref in enumerate(result.low_dose):
        outputs = {m: out for (s, m), out in result.low_dose_outputs.items() if s == ref.name}
        panels = list(outputs.items())
        field = scan_field(ref.hu)
        panels += [
            (f"diff {m} - input", np.where(field, out - ref.hu, 0))
            for m, out in outputs.items()
            if m != "input"
        ]
        path = figures / f"low-dose-{index + 1}.png"
        comparison_figure(
            path, panels, SOFT_TISSUE_WINDOW, {"slice": ref.name}, difference_half_width_hu=100.0
        )
        lines += [f"![low dose: {ref.name}]({out_dir.name}/figures/{path.name})", ""]
    return lines


def _recipe_table(result: CtEvalResult) -> str:
    rows = []
    for recipe in (TRAINING, result.recipe):
        geometries = recipe.geometries
        rows.append(
            {
                "recipe": recipe.name,
                "iso / detector (mm)": ", ".join(
                    f"{g.source_to_iso_mm:g} / {g.source_to_detector_mm:g}" for g in geometries
                ),
                "views": ", ".join(str(g.n_views) for g in geometries),
                "bowtie r / max (mm)": ", ".join(
                    f"{g.bowtie_radius_mm:g} / {g.bowtie_max_mm:g}" for g in geometries
                ),
                "kernel window": ", ".join(recipe.windows),
                "cutoff (× Nyquist)": "{:g}-{:g}".format(*recipe.cutoff_range),
                "boost": "{:g}-{:g}".format(*recipe.boost_range),
                "dose fraction": "{:g}-{:g}".format(*recipe.dose_range),
                "electronic var": f"{recipe.electronic_noise_var:g}",
                "I0": f"{recipe.i0:g}",
            }
        )
    return markdown_table(rows)


def _low_dose_table(result: CtEvalResult) -> str:
    if not result.low_dose_rows:
        return "(no real low-dose slice in this split)\n"
    return markdown_table(
        result.low_dose_rows,
        [
            "slice",
            "group",
            "method",
            "estimated_sigma_hu",
            "sigma_after_hu",
            "noise_reduction_pct",
            "bias_hu",
            "edge_correlation",
            "seconds",
        ],
    )


def timings(result: CtEvalResult) -> dict[str, Any]:
    """Seconds per slice of each method (mean over slices and levels) and per stage."""
    per_method: dict[str, list[float]] = {}
    for row in result.rows:
        per_method.setdefault(row["method"], []).append(float(row["seconds"]))
    return {
        "seconds_per_slice": {m: float(np.mean(v)) for m, v in per_method.items()},
        "stages_s": dict(result.timings_s),
    }


def summary(result: CtEvalResult, checks: Sequence[BarCheck]) -> dict[str, Any]:
    """The machine-readable summary: command, inputs' SHA-256, recipe, bar, timings."""
    return {
        "command": result.command,
        "config": {**asdict(result.config), "data_dir": str(result.config.data_dir)},
        "provenance": result.provenance,
        "recipe": asdict(result.recipe),
        "training_recipe": asdict(TRAINING),
        "models": result.models,
        "bm3d": result.bm3d,
        "slices": len(result.references),
        "low_dose_slices": len(result.low_dose),
        "bar_method": result.bar_method,
        "bar_met": bool(checks) and all(c.passed for c in checks),
        "bar": [{**asdict(c), "verdict": c.verdict} for c in checks],
        "timings": timings(result),
    }


def _bar_lines(result: CtEvalResult, checks: Sequence[BarCheck]) -> list[str]:
    if not checks:
        return ["(no model evaluated: no bar to check)", ""]
    failed = [c for c in checks if c.passed is False]
    unknown = [c for c in checks if c.passed is None]
    if not failed and not unknown:
        verdict = f"**The bar is met** by `{result.bar_method}`: all {len(checks)} checks pass."
    elif not failed:
        verdict = (
            f"**The bar is not fully checked** for `{result.bar_method}`: no check "
            f"fails, {len(unknown)} of {len(checks)} could not be measured."
        )
    else:
        verdict = (
            f"**The bar is missed** by `{result.bar_method}`: {len(failed)} of "
            f"{len(checks)} checks fail."
        )
    lines = [verdict, ""]
    lines += [
        f"- {c.verdict}: {c.level_hu:g} HU, {c.group}: {c.criterion}: {c.detail}" for c in checks
    ]
    return [*lines, ""]


def write_ct_report(result: CtEvalResult, out_dir: Path) -> Path:
    """Write ``results.csv``, ``groups.csv``, ``phantoms.csv``, ``low_dose.csv``,
    ``summary.json`` and ``figures/`` under ``out_dir``, and the Markdown report
    ``<out_dir>.md`` beside it (``docs/evaluation/ct`` gives ``docs/evaluation/ct.md``).

    Parameters
    ----------
    result : CtEvalResult
        What :func:`run_ct_evaluation` (or :func:`lab.ct_eval.evaluate_all`) measured.
    out_dir : Path
        The report folder; created if needed.

    Returns
    -------
    Path
        The Markdown report.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(result.rows, out_dir / "results.csv")
    write_csv([*result.groups, *result.paired], out_dir / "groups.csv")
    write_csv(result.phantom_rows, out_dir / "phantoms.csv")
    write_csv(result.low_dose_rows, out_dir / "low_dose.csv")
    checks = bar_checks(result)
    document = summary(result, checks)
    (out_dir / "summary.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    config, name = result.config, out_dir.name
    groups: dict[str, int] = {}
    for ref in result.references:
        groups[ref.group] = groups.get(ref.group, 0) + 1
    provenance = result.provenance
    manifest = provenance.get("manifest_sha256", "n/a")
    subsampled = (
        "all of them"
        if config.max_slices_per_collection is None
        else f"at most {config.max_slices_per_collection} per collection, evenly spaced "
        "(a quick run, not the report's figures)"
    )
    models = ", ".join(f"`{m}`" for m in result.models) or "none"
    lines = [
        f"# CT denoising evaluation ({config.split} split)",
        "",
        f"Made by `{result.command}`. Raw rows: [{name}/results.csv]({name}/results.csv), "
        f"aggregates [{name}/groups.csv]({name}/groups.csv), phantoms "
        f"[{name}/phantoms.csv]({name}/phantoms.csv), low dose "
        f"[{name}/low_dose.csv]({name}/low_dose.csv), summary [{name}/summary.json]"
        f"({name}/summary.json).",
        "",
        "## Data",
        "",
        f"Reference slices: the normal-dose slices of the `{config.split}` split of "
        f"`lab/manifests/ct.json` (SHA-256 `{manifest}`), split by patient (`lab/data.py`: "
        "whole scanner models and named patients are test-only; no patient is in two "
        f"splits); {subsampled}: {len(result.references)} slices of "
        f"{provenance.get('patients', 'n/a')} patients. Real low-dose slices: "
        f"{len(result.low_dose)} of {provenance.get('low_dose_patients', 'n/a')} patients.",
        "",
        markdown_table([{"group": g, "slices": n} for g, n in sorted(groups.items())]),
        "Metrics are taken inside the scan field only (reference ≥ -1024 HU; padding is kept "
        "as stored and excluded); σ, bias and NPS inside `soft_tissue_mask(reference)`.",
        "",
        "## Noise",
        "",
        f"Fan-beam noise (`models/fanbeam.py`) of the `{result.recipe.name}` recipe "
        "(`lab/noise.py`), made differently from the training noise: another geometry, "
        "bowtie, number of views and kernel family. Each field is scaled so its σ in the "
        f"slice's soft tissue is the level: {', '.join(f'{v:g}' for v in config.levels_hu)} "
        f"HU; seed {config.seed}, derived per (slice name, level), so a run with fewer "
        "slices or levels draws the same noise for those. Noise is added only inside the "
        "scan field.",
        "",
        _recipe_table(result),
        "## Methods",
        "",
        "Baselines: `input` (the noisy slice), `gaussian` (σ 1 px), `nlm` (non-local means "
        "given the true σ: h = 0.8 σ, 5×5 patches, 13×13 search), `bm3d` (given the true σ, "
        "on the image mapped to [0, 1] over [-1024, 3072]; evaluation-only, non-commercial "
        "licence)"
        + ("" if result.bm3d else " — **BM3D is not installed: its rows and checks are left out**")
        + f". Models (blind, no σ given): {models}; "
        f"the bar is checked for `{result.bar_method}`.",
        "",
        "## Results per noise level (all groups)",
        "",
        "Mean ± half-width of the 95 % t-interval over slices (no half-width for n = 1). "
        "Noise reduction: 100 (1 − σ_out / σ_in) of (output − reference) in soft tissue; "
        "NPS f̄ shift: the residual's NPS mean frequency (32-px ROIs) relative to the input "
        "noise's (negative: coarser, blotchier texture).",
        "",
    ]
    for level in config.levels_hu:
        lines += [f"### {level:g} HU", "", _slice_table(result, level, [ALL_GROUPS])]
    lines += ["## Results per noise level and group", ""]
    names = sorted(groups)
    for level in config.levels_hu:
        lines += [f"### {level:g} HU", "", _slice_table(result, level, names)]
    lines += [
        "## Paired differences (model − baseline, per slice)",
        "",
        "Mean and 95 % t-interval of the per-slice difference (the bar uses these); in "
        "`groups.csv` they are the rows whose method reads `model - baseline`.",
        "",
        _paired_table(result),
        "## Low-contrast phantoms",
        "",
        f"{config.phantoms} phantoms (`models/phantoms.low_contrast_phantom`, seeds 9000+, "
        "each different), exact truth. Bias: per uniform ROI the mean of (output − truth) "
        f"over {config.bias_draws} independent draws; the worst ROI of the worst phantom, "
        "with its standard error. CNR ratio: the mean CNR of the disks of the output over "
        "that of the input, averaged over draws; mean ± 95 % CI over phantoms. BM3D runs on "
        "draw 0 only (its time would dominate), so its bias is one draw's.",
        "",
        _phantom_table(result),
        "## Real low-dose slices (no reference)",
        "",
        "σ: the median standard deviation in 9×9 squares inside the soft-tissue mask "
        "(`flat_noise_sigma`), before and after. NLM gets this blind σ estimate: "
        "`skimage.restoration.estimate_sigma` (finest wavelet scale) underestimates CT's "
        "correlated noise several-fold (4.8 HU for 20 HU in a check on a phantom with "
        "TESTING noise). Bias: mean of (output − input) over the soft-tissue mask. Edge "
        "correlation: Pearson correlation of "
        "the smoothed |output − input| with the input's gradient magnitude over the body; "
        "high means the method removes edges.",
        "",
        _low_dose_table(result),
        f"## Quality bar ({result.bar_method})",
        "",
        *_bar_lines(result, checks),
        "## Timings",
        "",
        markdown_table(
            [
                {"method": m, "seconds per slice": s}
                for m, s in document["timings"]["seconds_per_slice"].items()
            ]
        ),
        "Stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items()) + ".",
        "",
        "## Figures",
        "",
        *_figures(result, out_dir),
        "## Command",
        "",
        f"    {result.command}",
        "",
    ]
    report = out_dir.parent / f"{out_dir.name}.md"
    report.write_text("\n".join(lines))
    return report
