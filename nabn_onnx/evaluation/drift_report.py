"""The report of a drift sweep, and how times since programming are read and labelled.

A :class:`DriftReport` holds one row per (time, chip) with the metric of every way to serve
the chip (:data:`METHODS`); it writes JSON, Markdown and CSV through the one report base
(:class:`~nabn_onnx.reports.Report`) and plots accuracy against time.
:func:`parse_times` reads ``"1s,1h,1d,1mo,1y"``; :func:`time_label` writes a time back.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Union

import numpy as np

from ..errors import NabnError
from ..reports import Report

__all__ = ["DriftReport", "parse_times", "time_label", "METHODS", "DEFAULT_TIMES"]

#: Column keys and their labels, in table order.
METHODS = {
    "vanilla": "vanilla",
    "gdc": "GDC",
    "nabn_once": "NaBN once",
    "nabn_once_gdc": "NaBN once + GDC",
    "nabn_each": "NaBN each",
    "dynamic": "dynamic NaBN",
}
#: 1 s, 1 h, 1 day, 1 month (30 days), 1 year (365 days).
DEFAULT_TIMES = (1.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0)
_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "mo": 30 * 86400.0, "y": 365 * 86400.0}


def parse_times(text: str) -> List[float]:
    """``"1s,1h,1d,1mo,1y"`` (or plain seconds) to seconds."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        match = re.fullmatch(r"([0-9.eE+-]+)\s*(s|min|h|d|w|mo|y)?", item)
        try:
            value = float(match.group(1)) * _UNITS[match.group(2) or "s"] if match else None
        except ValueError:
            value = None
        if value is None or not np.isfinite(value) or value < 0:
            raise NabnError(f"times must be numbers of seconds or like 1h, 1d, 1mo, 1y; got {item!r}")
        out.append(value)
    if not out:
        raise NabnError("give at least one time")
    return out


def time_label(seconds: float) -> str:
    """``3600`` to ``"1h"``: the largest unit that divides it, else seconds."""
    for unit in ("y", "mo", "d", "h", "min"):
        if seconds >= _UNITS[unit] and (seconds / _UNITS[unit]).is_integer():
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


@dataclass
class DriftReport(Report):
    """One row per (time, seed) with the metric of every method.

    Attributes:
        model: model name.
        metric: metric name.
        device: the device settings (without time and seed).
        clean: metric of the clean model.
        program_time: when NaBN-once was calibrated (seconds).
        momentum: NabnSession momentum of the dynamic column.
        warmup: passes over the calibration data the dynamic session served first.
        rows: ``{"t", "seed", "vanilla", "gdc", "nabn_once", "nabn_once_gdc", "nabn_each", "dynamic"}``.
        seconds: wall time per phase.
    """

    FORMATS: ClassVar[Dict[str, str]] = {".json": "to_json", ".md": "to_markdown", ".csv": "to_csv"}

    model: str
    metric: str
    device: Dict[str, object]
    clean: float
    program_time: float
    momentum: float
    warmup: int
    rows: List[Dict[str, float]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, payload: Dict[str, Any]) -> DriftReport:
        """The report back from :meth:`to_dict` (a ``.json`` report)."""
        keys = ("model", "metric", "device", "clean", "program_time", "momentum", "warmup", "rows", "seconds")
        return cls(**{k: payload[k] for k in keys})

    def by_time(self) -> List[Dict[str, float]]:
        """Per time: mean and std (over chips) of every method."""
        out = []
        for t in sorted({r["t"] for r in self.rows}):
            rows = [r for r in self.rows if r["t"] == t]
            entry: Dict[str, float] = {"t": t, "chips": len(rows)}
            for key in METHODS:
                values = np.array([r[key] for r in rows], dtype=float)
                entry[f"{key}_mean"] = float(values.mean())
                entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out.append(entry)
        return out

    def table(self) -> str:
        """Markdown: one row per time, one column per method (percent, mean ± std over chips)."""
        lines = ["| time since programming | " + " | ".join(METHODS.values()) + " |", "|---|" + "---:|" * len(METHODS)]
        for s in self.by_time():
            cells = [f"{100 * s[f'{k}_mean']:.2f} ± {100 * s[f'{k}_std']:.2f}" for k in METHODS]
            lines.append(f"| {time_label(s['t'])} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Markdown: the device, the chips and the protocol, then :meth:`table`."""
        d = self.device
        settings = ", ".join(f"{k} = {v}" for k, v in d.items() if k not in ("noise", "seed", "t_inference"))
        chips = len({r["seed"] for r in self.rows})
        return "\n".join(
            [
                f"# Drift: {self.model}",
                "",
                (
                    f"{self.metric} (%) on a {str(d['noise']).upper()} chip ({settings}), {chips} chip(s), "
                    "mean ± std over "
                    f"chips. NaBN once: calibrated at {time_label(self.program_time)}; dynamic: NabnSession, momentum "
                    f"{self.momentum}, {self.warmup} warm-up pass(es) over the calibration data. Clean model: "
                    f"{100 * self.clean:.2f}%."
                ),
                "",
                self.table(),
                "",
            ]
        )

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready: the fields, plus :meth:`by_time`."""
        return {
            "model": self.model,
            "metric": self.metric,
            "device": self.device,
            "clean": self.clean,
            "program_time": self.program_time,
            "momentum": self.momentum,
            "warmup": self.warmup,
            "rows": self.rows,
            "by_time": self.by_time(),
            "seconds": self.seconds,
        }

    def to_csv(self) -> str:
        """One CSV line per chip and time: ``t``, ``seed`` and every method's metric."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["t", "seed", *METHODS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def summary(self) -> str:
        """One line: the clean metric and every method at the last time."""
        last = self.by_time()[-1]
        parts = ", ".join(f"{label} {100 * last[f'{k}_mean']:.2f}%" for k, label in METHODS.items())
        return (
            f"drift of {self.model} over {len(self.by_time())} time(s) x {last['chips']} chip(s): clean "
            f"{100 * self.clean:.2f}%; at {time_label(last['t'])}: {parts} ({self.metric}), in "
            f"{self.seconds.get('total', 0.0):.1f}s"
        )

    def plot(self, path: Union[str, Path], title: Optional[str] = None) -> Path:
        """Metric against time since programming (log axis), one line per method, chips as a band."""
        from .plots import pyplot, save_figure

        plt = pyplot()
        stats = self.by_time()
        t = np.array([s["t"] for s in stats])
        fig, ax = plt.subplots(figsize=(7, 4.2))
        styles = ("o-", "s--", "v-", "^--", "D-", "x:")  # methods often coincide: tell them apart
        for (key, label), style in zip(METHODS.items(), styles):
            mean = 100 * np.array([s[f"{key}_mean"] for s in stats])
            std = 100 * np.array([s[f"{key}_std"] for s in stats])
            (line,) = ax.plot(t, mean, style, label=label, markersize=5, alpha=0.85)
            ax.fill_between(t, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        ax.axhline(100 * self.clean, color="black", linestyle="--", linewidth=1, label="clean")
        ax.set_xscale("log")
        ax.set_xticks(t)
        ax.set_xticklabels([time_label(v) for v in t])
        ax.set_xlabel("time since programming")
        ax.set_ylabel(f"{self.metric} (%)")
        ax.set_title(title or f"{self.model} on {str(self.device['noise']).upper()}: accuracy over time")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        try:
            return save_figure(fig, path)
        finally:
            plt.close(fig)
