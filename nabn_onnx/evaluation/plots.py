"""Figures for sweeps and diagnostics (matplotlib, the optional ``plot`` extra).

matplotlib is imported when a figure is drawn, with the non-interactive Agg backend, so
the package works without it; a missing matplotlib is a one-line :class:`NabnError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import NabnError
from .diagnose import DiagnoseReport
from .sweep import SweepReport

__all__ = ["plot_sweep", "plot_diagnose", "pyplot"]

_VANILLA, _NABN, _RATIO = "tab:green", "tab:blue", "tab:red"
#: Path parts that say nothing about which layer it is (exporter op names, the inserted BatchNorm's suffix).
_NOISE_WORDS = {"Conv", "Gemm", "MatMul", "ConvTranspose", "BatchNormalization", "nabn_bn"}


def pyplot():
    """Matplotlib's pyplot on the Agg backend, or a NabnError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise NabnError("plots need matplotlib: pip install nabn-onnx[plot]") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Union[str, os.PathLike]) -> Path:
    """Save atomically (temporary file in the same folder, then rename)."""
    from ..model import atomic_write_bytes

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise NabnError(f"output folder does not exist: {folder}")
    return atomic_write_bytes(
        path, lambda tmp: figure.savefig(tmp, dpi=120, bbox_inches="tight", format=(path.suffix or ".png")[1:])
    )


def _draw_sweep(ax, report: SweepReport, title: Optional[str]) -> None:
    stats = report.by_eta()
    etas = np.array([s["eta"] for s in stats])
    for key, label, color in (("vanilla", "vanilla", _VANILLA), ("nabn", "NaBN", _NABN)):
        mean = 100 * np.array([s[f"{key}_mean"] for s in stats])
        low = 100 * np.array([s[f"{key}_min"] for s in stats])
        high = 100 * np.array([s[f"{key}_max"] for s in stats])
        ax.plot(etas, mean, "o-", color=color, label=f"{label} (mean)")
        ax.fill_between(etas, low, high, color=color, alpha=0.2, label=f"{label} (min-max over chips)")
    ax.axhline(100 * report.clean_of(), color="black", linestyle="--", linewidth=1, label="clean")
    ax.set_xlabel(f"noise scale η ({str(report.settings['noise']).upper()})")
    ax.set_ylabel(f"{report.metric} (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    chips = len({r["seed"] for r in report.rows})
    ax.set_title(title or f"{report.model}: {chips} chip(s) per η")
    ax.legend(fontsize="small", loc="best")


def plot_sweep(
    reports: Union[SweepReport, Sequence[SweepReport]],
    path: Union[str, os.PathLike],
    titles: Optional[Sequence[str]] = None,
) -> Path:
    """Accuracy against eta: vanilla and NaBN means, min-max bands over chips, clean as a dashed line.

    Args:
        reports: one report, or several drawn side by side.
        path: the image file (``.png``, ``.svg``, ``.pdf``).
        titles: one title per report (default: model name and chip count).

    Raises:
        NabnError: a report of several methods or test sets (plot each one's rows apart).
    """
    reports = [reports] if isinstance(reports, SweepReport) else list(reports)
    if any(report.multi for report in reports):
        raise NabnError("plot_sweep draws one method on one test set; this sweep has several")
    plt = pyplot()
    figure, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4), squeeze=False)
    for i, (ax, report) in enumerate(zip(axes[0], reports)):
        _draw_sweep(ax, report, titles[i] if titles else None)
    figure.tight_layout()
    try:
        return save_figure(figure, path)
    finally:
        plt.close(figure)


def _short(layer: str) -> str:
    """A tick label: the last two parts of an exporter's path-like name, without op and nabn suffixes."""
    parts = [p for p in layer.strip("/").split("/") if p not in _NOISE_WORDS]
    # "stages/stages.0/stages.0.1/conv1": a module path repeats each prefix; keep the longest form.
    parts = [p for p, q in zip(parts, [*parts[1:], ""]) if not q.startswith(p + ".")]
    return "/".join(parts[-2:]) or layer


def plot_diagnose(report: DiagnoseReport, path: Union[str, os.PathLike], title: Optional[str] = None) -> Path:
    """Per-layer KL and JS bars without (green) and with (blue) calibration, and their ratio (red line)."""
    plt = pyplot()
    layers = [_short(d.layer) for d in report.layers]
    x = np.arange(len(layers))
    figure, axes = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(layers) + 2), 7), sharex=True)
    for ax, kind in zip(axes, ("kl", "js")):
        vanilla = [getattr(d, f"{kind}_vanilla") for d in report.layers]
        nabn = [getattr(d, f"{kind}_nabn") for d in report.layers]
        ax.bar(x - 0.2, vanilla, 0.4, color=_VANILLA, label="without calibration")
        ax.bar(x + 0.2, nabn, 0.4, color=_NABN, label="with NaBN calibration")
        ax.set_ylabel(f"{kind.upper()} divergence")
        ratio_ax = ax.twinx()
        ratio_ax.plot(x, [getattr(d, f"{kind}_ratio") for d in report.layers], "o-", color=_RATIO, label="ratio")
        ratio_ax.set_ylabel("ratio (without / with)", color=_RATIO)
        ratio_ax.set_yscale("log")
        handles = ax.get_legend_handles_labels()[0] + ratio_ax.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(layers, rotation=60, ha="right", fontsize="small")
    n = report.noise
    axes[0].set_title(
        title or f"activation divergence per layer, {str(n['noise']).upper()} η={n['eta']:g} seed={n['seed']}"
    )
    figure.tight_layout()
    try:
        return save_figure(figure, path)
    finally:
        plt.close(figure)
