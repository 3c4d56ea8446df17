"""Evaluation report output: CSV rows, Markdown tables and side-by-side comparison figures."""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

FIGURE_DPI = 100
FIGURE_HEADER_PX = 48  # panel title and window
FIGURE_FOOTER_PX = 24  # annotations that name no panel


def _columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return columns


def write_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Write rows as a CSV file with a header line.

    Floats are written with ``repr`` so they read back exactly; ``None`` and missing
    keys become empty cells.

    Parameters
    ----------
    rows : sequence of mapping
        One mapping per row, column name to value.
    path : str or Path
        Output file; its parent directory is created if needed.
    columns : sequence of str or None
        Column order; None takes every key in first-seen order.

    Returns
    -------
    Path
        The written file.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns) if columns is not None else _columns_of(rows)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: "" if value is None else _csv_value(value) for key, value in row.items()}
            )
    return out


def _csv_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, float) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, Real | np.number) and not isinstance(value, bool)


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, Integral | np.integer) and not isinstance(value, bool):
        return str(int(value))
    if _is_number(value):
        number = float(value)
        return str(number) if math.isnan(number) or math.isinf(number) else f"{number:{floatfmt}}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    floatfmt: str = ".2f",
) -> str:
    """Format rows as a GitHub-flavoured Markdown table.

    Columns whose values are all numbers are right-aligned (``---:``), others left
    (``---``). Floats use ``floatfmt`` (``inf`` and ``nan`` are written as such), ints
    are written in full, ``None`` and missing keys are empty, and ``|`` is escaped.

    Parameters
    ----------
    rows : sequence of mapping
        One mapping per row.
    columns : sequence of str or None
        Columns in order; None takes every key in first-seen order.
    floatfmt : str
        Format specification for floats, e.g. ``".2f"`` or ``".3g"``.

    Returns
    -------
    str
        Header, separator and one line per row, ending with a newline.
    """
    names = list(columns) if columns is not None else _columns_of(rows)
    if not names:
        raise ValueError("no columns to write")
    lines = ["| " + " | ".join(_cell(name, floatfmt) for name in names) + " |"]
    aligns = []
    for name in names:
        values = [row.get(name) for row in rows if row.get(name) is not None]
        numeric = bool(values) and all(_is_number(value) for value in values)
        aligns.append("---:" if numeric else "---")
    lines.append("| " + " | ".join(aligns) + " |")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(name), floatfmt) for name in names) + " |")
    return "\n".join(lines) + "\n"


def figure_size_px(n_panels: int, panel_px: int = 256) -> tuple[int, int]:
    """Pixel size (width, height) of a ``comparison_figure`` with ``n_panels`` panels."""
    return n_panels * panel_px, panel_px + FIGURE_HEADER_PX + FIGURE_FOOTER_PX


def comparison_figure(
    path: str | Path,
    panels: Sequence[tuple[str, np.ndarray]],
    window: tuple[float, float],
    annotations: Mapping[str, str] | None = None,
    *,
    difference_titles: Collection[str] | None = None,
    difference_half_width_hu: float | None = None,
    panel_px: int = 256,
) -> Path:
    """Write a PNG with 2-D images side by side in a HU display window.

    Image panels are grey-scale in ``window`` (low, high) HU. Difference panels (titles
    in ``difference_titles``; by default those starting with "diff", any case) use a
    blue-white-red map in the symmetric window ``±difference_half_width_hu`` (default:
    half the width of ``window``). Each panel is titled with its name and window.
    ``annotations`` whose key is a panel title are written in that panel's lower-left
    corner (e.g. its metrics); the others are written as ``key: text`` in a footer. The
    figure is drawn with the Agg canvas (no display, no pyplot state), without
    software metadata, so the same inputs give the same file.

    Parameters
    ----------
    path : str or Path
        Output PNG; its parent directory is created if needed.
    panels : sequence of (str, np.ndarray)
        Titles and 2-D images in HU, e.g. input, enhanced, reference, difference.
    window : tuple of float
        (low, high) HU display window of the image panels.
    annotations : mapping of str to str or None
        Text per panel title, or footer lines.
    difference_titles : collection of str or None
        Titles of the difference panels; None selects titles starting with "diff".
    difference_half_width_hu : float or None
        Half width of the difference window; None uses ``(high - low) / 2``.
    panel_px : int
        Side of each panel in pixels.

    Returns
    -------
    Path
        The written file, ``figure_size_px(len(panels), panel_px)`` pixels in size.

    Raises
    ------
    ValueError
        If there are no panels, an image is not 2-D, or the window is empty.
    """
    from matplotlib.figure import Figure

    low, high = window
    if not panels:
        raise ValueError("panels is empty")
    if not high > low:
        raise ValueError(f"window must have high > low, got {window}")
    for title, image in panels:
        if np.ndim(image) != 2:
            raise ValueError(f"panel {title!r} must be 2-D, got shape {np.shape(image)}")
    half = (high - low) / 2.0 if difference_half_width_hu is None else difference_half_width_hu
    notes = dict(annotations or {})
    titles = {title for title, _ in panels}

    def is_difference(title: str) -> bool:
        if difference_titles is None:
            return title.lower().startswith("diff")
        return title in difference_titles

    width_px, height_px = figure_size_px(len(panels), panel_px)
    fig = Figure(figsize=(width_px / FIGURE_DPI, height_px / FIGURE_DPI), dpi=FIGURE_DPI)
    fig.patch.set_facecolor("black")
    for index, (title, image) in enumerate(panels):
        ax = fig.add_axes(
            (
                index / len(panels),
                FIGURE_FOOTER_PX / height_px,
                1.0 / len(panels),
                panel_px / height_px,
            )
        )
        if is_difference(title):
            cmap, vmin, vmax = "RdBu_r", -half, half
        else:
            cmap, vmin, vmax = "gray", low, high
        ax.imshow(
            np.asarray(image, dtype=np.float64),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_axis_off()
        ax.set_title(f"{title}\n[{vmin:g}, {vmax:g}] HU", color="white", fontsize=9, pad=4)
        if title in notes:
            ax.text(
                0.02,
                0.02,
                notes[title],
                transform=ax.transAxes,
                color="yellow",
                fontsize=8,
                va="bottom",
                ha="left",
                family="monospace",
                bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 2},
            )
    footer = "   ".join(f"{key}: {text}" for key, text in notes.items() if key not in titles)
    if footer:
        fig.text(
            0.01,
            0.5 * FIGURE_FOOTER_PX / height_px,
            footer,
            color="white",
            fontsize=8,
            va="center",
            ha="left",
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=FIGURE_DPI, facecolor="black", metadata={"Software": None})
    return out
