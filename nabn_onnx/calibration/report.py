"""What a calibration did: :class:`CalibrationReport` (one line, JSON, Markdown) and the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional

import numpy as np
from onnx import ModelProto

from ..reports import Report

__all__ = ["LayerShift", "CalibrationReport", "CalibrationResult", "layer_shift"]


@dataclass
class LayerShift:
    """How one BatchNorm's statistics moved.

    Attributes:
        bn: BatchNormalization name.
        origin: ``"original"`` or ``"inserted"``.
        channels: channel count.
        mean_shift: average over channels of ``|mean' - mean| / sqrt(var + eps)``.
        var_ratio: geometric mean over channels of ``var' / var``.
    """

    bn: str
    origin: str
    channels: int
    mean_shift: float
    var_ratio: float


def layer_shift(
    name: str, origin: str, before: Dict[str, np.ndarray], after: Dict[str, np.ndarray], eps: float
) -> LayerShift:
    """How a BatchNorm's statistics moved from ``before`` to ``after`` (``{"mean", "var"}`` each)."""
    mean0, var0 = before["mean"], before["var"]
    mean1, var1 = np.asarray(after["mean"], np.float64), np.asarray(after["var"], np.float64)
    shift = float(np.mean(np.abs(mean1 - mean0) / np.sqrt(var0 + eps)))
    ratio = float(np.exp(np.mean(np.log((var1 + eps) / (var0 + eps)))))
    return LayerShift(name, origin, int(mean0.size), shift, ratio)


@dataclass
class CalibrationReport(Report):
    """What a calibration did, with per-layer statistic shifts; ``write`` takes ``.json`` and ``.md``.

    Attributes:
        method: the method asked for.
        chosen: the statistics written (``auto`` picks one of :data:`~.methods.CANDIDATES`).
        scores: ``auto``'s score per candidate (lower is better), or None.
        estimator: the estimator's settings.
        noise: the simulated chip's settings, or None.
        batches: calibration batches.
        samples: calibration samples.
        seconds: wall time.
        inserted: BatchNorms inserted by this run's split.
        layers: per recalibrated BatchNorm, how its statistics moved.
        mode: ``"simulated"`` (noise on a clean model), ``"reference"`` (the model is the
            chip, the clean model given) or ``"chip"`` (the model is the chip, no clean model).
        left: BatchNorms or analog layers left alone, with the reason.
        scored_on: samples ``auto`` scored on (0: none).
        in_sample: ``auto`` scored on the samples it fitted (no batch could be split).
        note: why the method ran as it did (e.g. ``auto`` without a clean model).
        batch: how the model's batch dimension was handled.
        test: the task metric of the clean, noisy and calibrated model on labelled test data
            (``{"metric", "clean", "noisy", "calibrated"}``), when it was measured.
        steps: wall seconds of each step that had work to do, in the order run (``check``,
            ``prepare``, ``measure_inserted``, ``measure_clean``, ``clean_session``, ``put_noise``,
            ``measure_noisy``, ``choose``, ``write_back``, ``save``): where a chip's time goes.
    """

    FORMATS: ClassVar[Dict[str, str]] = {".json": "to_json", ".md": "to_markdown"}

    method: str
    estimator: Dict[str, object]
    noise: Optional[Dict[str, object]]
    batches: int
    samples: int
    seconds: float
    inserted: List[str] = field(default_factory=list)
    layers: List[LayerShift] = field(default_factory=list)
    chosen: str = ""
    scores: Optional[Dict[str, float]] = None
    mode: str = "simulated"
    left: Dict[str, str] = field(default_factory=dict)
    scored_on: int = 0
    in_sample: bool = False
    note: str = ""
    batch: str = "dynamic batch"
    test: Optional[Dict[str, object]] = None
    steps: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        """JSON-able form of the report (what ``--report`` writes)."""
        out: Dict[str, object] = {
            "method": self.method,
            "chosen": self.chosen,
            "scores": self.scores,
            "scored_on": self.scored_on,
            "in_sample": self.in_sample,
            "mode": self.mode,
            "note": self.note,
            "batch": self.batch,
            "estimator": self.estimator,
            "noise": self.noise,
            "batches": self.batches,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "steps": {name: round(seconds, 3) for name, seconds in self.steps.items()},
            "inserted": self.inserted,
            "layers": [vars(layer) for layer in self.layers],
            "left": self.left,
        }
        if self.test is not None:
            out["test"] = self.test
        return out

    def summary(self) -> str:
        """One line with the numbers: what was recalibrated, how, on what, and what was left alone and why."""
        if self.noise:
            noise = f"{self.noise['noise']} eta={self.noise['eta']:g} seed={self.noise['seed']}"
            if self.noise.get("t_inference") is not None:  # device models: the time since programming matters
                noise += f" t={self.noise['t_inference']:g}s"
        else:
            noise = "the model as the chip" + (" (clean reference given)" if self.mode == "reference" else "")
        shifts = [layer.mean_shift for layer in self.layers]
        worst = f", largest mean shift {max(shifts):.3g} std" if shifts else ""
        method = f"'{self.method}'"
        if self.chosen != self.method:
            how = f"chose '{self.chosen}'"
            if self.scores is not None:
                kind = "calibration (in-sample)" if self.in_sample else "held-out"
                how += f", scored on {self.scored_on} {kind} samples"
            method += f" ({how})"
        verb = "left the statistics of" if self.chosen == "none" else "calibrated"
        line = (
            f"{verb} {len(self.layers)} BatchNorm layer(s) ({len(self.inserted)} inserted) with method "
            f"{method} on {self.batches} batch(es) / {self.samples} samples, {noise}{worst}, in {self.seconds:.2f}s"
        )
        if self.chosen == "none":
            line += "; no candidate beat the statistics as they were on its score, so they are unchanged"
        if self.batch != "dynamic batch":
            line += f"; {self.batch}"
        if self.note:
            line += f"; {self.note}"
        if self.left:
            reasons: Dict[str, List[str]] = {}
            for name, why in self.left.items():
                reasons.setdefault(why, []).append(name)
            line += "; left alone: " + "; ".join(
                f"{len(names)} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''}): {why}"
                for why, names in reasons.items()
            )
        return line

    def step_lines(self) -> List[str]:
        """One line per timed step, with its share of the whole job (``calibrate -v`` prints them)."""
        total = self.seconds or sum(self.steps.values()) or 1.0
        return [f"  {name:<17} {seconds:8.2f}s {100 * seconds / total:5.1f}%" for name, seconds in self.steps.items()]

    def to_markdown(self) -> str:
        """The report as a Markdown table, one row per BatchNorm."""
        lines = [
            "# Calibration report",
            "",
            self.summary(),
            "",
            "| BatchNorm | origin | channels | mean shift (std) | variance ratio |",
            "|---|---|---:|---:|---:|",
        ]
        for layer in self.layers:
            lines.append(
                f"| {layer.bn} | {layer.origin} | {layer.channels} | {layer.mean_shift:.4f} | {layer.var_ratio:.4f} |"
            )
        if self.steps:
            lines += ["", "| step | seconds |", "|---|---:|"]
            lines += [f"| {name} | {seconds:.2f} |" for name, seconds in self.steps.items()]
        if self.left:
            lines += ["", "| left alone | why |", "|---|---|"]
            lines += [f"| {name} | {why} |" for name, why in self.left.items()]
        text = "\n".join(lines) + "\n"
        if self.test is not None:
            test = self.test
            text += f"\n| model | {test['metric']} |\n|---|---:|\n" + "".join(
                f"| {k} | {'n/a' if test[k] is None else f'{100 * test[k]:.2f}%'} |\n"  # type: ignore[operator]
                for k in ("clean", "noisy", "calibrated")
            )
        return text


@dataclass
class CalibrationResult:
    """The calibrated model and its report."""

    model: ModelProto
    report: CalibrationReport
