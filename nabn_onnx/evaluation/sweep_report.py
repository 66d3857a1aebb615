"""The report of a robustness sweep: one row per chip, its summary per eta, and how it is written.

A :class:`SweepReport` writes JSON, Markdown (the paper's Tables I-II) and CSV through the
one report base (:class:`~nabn_onnx.reports.Report`). A sweep of several calibration methods
or several test sets gives rows that also name their ``method`` and ``test``; its summaries
and tables are then per (noise, eta, test, method), and ``clean`` holds one figure per test
set. A metric that gives several numbers adds a third key, ``metric``, to every row (and to
the summaries and tables), and ``clean`` then holds ``{test: {metric: number}}``. A
one-method, one-test-set, one-number sweep has none of these keys and a single ``clean`` figure.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..reports import Report

__all__ = ["SweepReport", "ROW_KEYS", "spread"]

#: The keys of a one-method, one-test-set sweep's rows, in CSV column order.
ROW_KEYS = ("noise", "eta", "seed", "vanilla", "nabn")
#: What a row of a several-method or several-test-set sweep adds: its test set and its method.
_MULTI_KEYS = ("test", "method")
#: What a row of a sweep whose metric gives several numbers adds besides: which number it holds.
_METRIC_KEY = "metric"


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample std (ddof=1; 0 for one value), min and max of ``values``, in float64."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
    }


@dataclass
class SweepReport(Report):
    """Results of a sweep.

    Attributes:
        model: the model's name (file stem or graph name).
        metric: the metric's name.
        method: calibration method (several: their names joined by commas).
        settings: the noise settings shared by every chip (kind, sigma_t, sigma_s, ...).
        clean: the metric of the clean model; with several methods or test sets, one figure
            per test set (by name); with a metric that gives several numbers, ``{test: {metric: number}}``.
        rows: one ``{"noise", "eta", "seed", "vanilla", "nabn"}`` per chip; with several
            methods or test sets, one per (chip, test set, method), with ``"test"`` and ``"method"``;
            with a metric that gives several numbers, one per (chip, test set, method, metric),
            with ``"metric"`` too.
        seconds: wall time, and its parts (``"calibrate"``, ``"vanilla"``, ``"nabn"``, ``"sessions"``).
        reuse_sessions: whether chips shared sessions.
        executor: where the chips ran (``"serial"``, ``"2 local processes"``, ``"Ray (local)"``).
        resumed: chips read back from the results file rather than run.
    """

    FORMATS: ClassVar[Dict[str, str]] = {".json": "to_json", ".md": "to_markdown", ".csv": "to_csv"}

    model: str
    metric: str
    method: str
    settings: Dict[str, Any]  # JSON-able records, as read back from results files
    clean: Union[float, Dict[str, Union[float, Dict[str, float]]]]
    rows: List[Dict[str, Any]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    reuse_sessions: bool = False
    executor: str = "serial"
    resumed: int = 0

    @property
    def multi(self) -> bool:
        """Whether rows name their test set and method (a sweep of several of either)."""
        return bool(self.rows) and "method" in self.rows[0]

    @property
    def several_metrics(self) -> bool:
        """Whether rows name their ``metric`` (a metric that gives several numbers)."""
        return bool(self.rows) and _METRIC_KEY in self.rows[0]

    def clean_of(self, test: Optional[str] = None, metric: Optional[str] = None) -> float:
        """The clean model's figure on test set ``test`` (the first when None), of ``metric`` (the first when None)."""
        if isinstance(self.clean, dict):
            value = self.clean[test if test is not None else next(iter(self.clean))]
            if isinstance(value, dict):
                return value[metric if metric is not None else next(iter(value))]
            return value
        return self.clean

    def _multi_keys(self) -> Tuple[str, ...]:
        if not self.multi:
            return ()
        return (*_MULTI_KEYS, _METRIC_KEY) if self.several_metrics else _MULTI_KEYS

    def _group_keys(self) -> tuple:
        return ("noise", "eta", *self._multi_keys())

    def by_eta(self) -> List[Dict[str, Any]]:
        """Per (noise, eta): chip count and mean, std (sample, ddof=1), min and max of vanilla and nabn.

        With several methods or test sets, per (noise, eta, test, method), each entry naming both.
        """
        keys = self._group_keys()
        groups: Dict[tuple, List[Dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
        out = []
        for group, rows in groups.items():
            entry: Dict[str, Any] = dict(zip(keys, group))
            entry["chips"] = len(rows)
            for key in ("vanilla", "nabn"):
                entry.update({f"{key}_{k}": v for k, v in spread([r[key] for r in rows]).items()})
            out.append(entry)
        return out

    def to_dict(self) -> Dict[str, object]:
        """JSON-able form of the sweep: settings, clean figure, one row per chip and the summary."""
        return {
            "model": self.model,
            "metric": self.metric,
            "method": self.method,
            "settings": self.settings,
            "clean": self.clean,
            "rows": self.rows,
            "by_eta": self.by_eta(),
            "reuse_sessions": self.reuse_sessions,
            "executor": self.executor,
            "resumed": self.resumed,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def to_csv(self) -> str:
        """One CSV row per chip (and test set and method), with the clean model's figure on each."""
        keys = (*ROW_KEYS, *self._multi_keys())
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*keys, "clean"])
        for row in self.rows:
            writer.writerow([*(row[k] for k in keys), self.clean_of(row.get("test"), row.get(_METRIC_KEY))])
        return buffer.getvalue()

    def table(self, label: Optional[str] = None) -> str:
        """A markdown table like the paper's Tables I-II: a vanilla and a +NaBN row, one column per eta.

        With several test sets or methods: a vanilla row per test set and a +NaBN row per
        (test set, method).
        """
        stats = self.by_eta()
        label = label or self.model
        if self.several_metrics:
            return "\n\n".join(
                self._multi_table([s for s in stats if s[_METRIC_KEY] == metric], label, metric)
                for metric in dict.fromkeys(s[_METRIC_KEY] for s in stats)
            )
        if self.multi:
            return self._multi_table(stats, label)
        header = "| Model | " + " | ".join(f"{s['noise'].upper()} η={s['eta']:g}" for s in stats) + " |"
        lines = [header, "|---|" + "---:|" * len(stats)]
        for key, name in (("vanilla", label), ("nabn", f"{label}+NaBN")):
            cells = [f"{100 * s[f'{key}_mean']:.2f} ± {100 * s[f'{key}_std']:.2f}" for s in stats]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    @staticmethod
    def _multi_table(stats: List[Dict[str, Any]], label: str, metric: Optional[str] = None) -> str:
        columns = list(dict.fromkeys((s["noise"], s["eta"]) for s in stats))
        tests = list(dict.fromkeys(s["test"] for s in stats))
        methods = list(dict.fromkeys(s["method"] for s in stats))
        index = {(s["noise"], s["eta"], s["test"], s["method"]): s for s in stats}

        def cells(key: str, test: str, method: str) -> str:
            picked = [index[(noise, eta, test, method)] for noise, eta in columns]
            return " | ".join(f"{100 * s[f'{key}_mean']:.2f} ± {100 * s[f'{key}_std']:.2f}" for s in picked)

        first = "Model" if metric is None else f"Model ({metric})"
        header = f"| {first} | test | " + " | ".join(f"{noise.upper()} η={eta:g}" for noise, eta in columns) + " |"
        lines = [header, "|---|---|" + "---:|" * len(columns)]
        for test in tests:
            lines.append(f"| {label} | {test} | {cells('vanilla', test, methods[0])} |")
            for method in methods:
                lines.append(f"| {label}+NaBN ({method}) | {test} | {cells('nabn', test, method)} |")
        return "\n".join(lines)

    def _clean_text(self) -> str:
        if isinstance(self.clean, dict):
            return ", ".join(
                ", ".join(f"{100 * v:.2f}% {metric} on {name}" for metric, v in value.items())
                if isinstance(value, dict)
                else f"{100 * value:.2f}% on {name}"
                for name, value in self.clean.items()
            )
        return f"{100 * self.clean:.2f}%"

    def to_markdown(self) -> str:
        """The sweep as a Markdown report: title, settings and the table."""
        chips = sorted({r["seed"] for r in self.rows})
        s = self.settings
        if "sigma_t" in s:
            how = f"(sigma_t = {s['sigma_t']}·eta, sigma_s = {s['sigma_s']}, temporal draw per {s['temporal']})"
        else:  # a device model: its own parameters
            how = "(" + ", ".join(f"{k} = {v}" for k, v in s.items() if k not in ("noise", "eta", "seed")) + ")"
        methods = "NaBN methods" if "," in self.method else "NaBN method"
        lines = [
            f"# Robustness sweep: {self.model}",
            "",
            (
                f"{self.metric} (%) under {str(s['noise']).upper()} noise {how}, {len(chips)} chip(s) per eta, "
                f"mean ± std over chips; {methods} '{self.method}'. Clean model: {self._clean_text()}."
            ),
            "",
            self.table(),
            "",
        ]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line with the numbers."""
        stats = self.by_eta()
        worst = min(stats, key=lambda s: s["vanilla_mean"])
        where = f"at {worst['noise']} eta={worst['eta']:g}"
        if self.multi:
            where += f" on {worst['test']} with {worst['method']}"
        if self.several_metrics:
            where += f" ({worst[_METRIC_KEY]})"
        etas = len({(s["noise"], s["eta"]) for s in stats})
        return (
            f"swept {etas} eta(s) x {len(self.rows) // max(len(stats), 1)} chip(s) of {self.model}: clean "
            f"{self._clean_text()}, {where} "
            f"vanilla {100 * worst['vanilla_mean']:.2f}% "
            f"vs NaBN {100 * worst['nabn_mean']:.2f}% ({self.metric}), in {self.seconds.get('total', 0.0):.1f}s"
            + (f" on {self.executor}" if self.executor != "serial" else "")
            + (f" ({self.resumed} chip(s) resumed from the results file)" if self.resumed else "")
        )
