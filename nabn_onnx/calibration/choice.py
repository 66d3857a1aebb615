"""Choosing the statistics to write: ``auto``'s candidates, and the guard of a chip without its clean model.

Both score candidates with the one loop of :mod:`.scoring` on the samples the hold-out
policy (:mod:`.holdout`) leaves out; they differ only in the scorer: ``auto`` compares
with the clean model's outputs (:class:`~.scoring.OutputDivergenceScorer`), the chip guard,
which has no clean model, with the labels (:class:`~.scoring.Top1Scorer`). When nothing
could be held out, the candidates are scored in-sample, and the report says so.

``auto`` keeps a candidate by :func:`decide`, on the score of every scored sample, not
only the means: a quarter of the calibration set is often a few dozen samples, and the
per-sample divergence is heavy-tailed (on the PP-OCR classifier at ADD 0.003 one line of 48
carried all of ``delta``'s mean, while ``blend``'s rare large divergences fell outside
the 48), so the lowest mean can be luck. A candidate replaces a simpler one
(:data:`PREFERENCE`) only when it is lower by more than :data:`WITHIN_NOISE` standard
errors of the paired per-sample differences; on labelled classifier data a candidate
that classifies more held-out samples right by more than the same noise wins over the
one closest to the clean outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ..data import DataLike
from ..logs import warn_once
from ..progress import Progress
from .config import Reading
from .holdout import held_out
from .job import CalibrationJob
from .methods import Paper, Unchanged, get_method
from .scoring import (
    SEVERE,
    NothingScoredError,
    OutputDivergenceScorer,
    Top1Scorer,
    UnscorableError,
    pick_candidate,
    score_candidates,
)

__all__ = ["choose_by_score", "guard_chip", "decide", "Decision", "PREFERENCE", "WITHIN_NOISE", "RESOLUTION"]

#: ``auto``'s candidates from the simplest to the least simple: where scores are within noise
#: of each other the first is kept. ``delta`` leaves the statistics as trained and moves them
#: only by what the noise changed (without noise it changes nothing); ``paper`` is Algorithm
#: 1 as published; ``blend`` mixes the two; ``none`` is kept when it alone is best.
PREFERENCE = ("delta", "paper", "blend", "none")
#: A candidate beats a simpler one only by more than this many standard errors of their
#: per-sample score differences (a one-sided paired test at about 2%).
WITHIN_NOISE = 2.0
#: Scores closer than this are equal: float rounding. A network whose outputs do not move with
#: the statistics (saturated, or random weights) scores every candidate within 1e-15 of 0, with
#: signs the rounding picks (a KL divergence of -1.1e-15 for ``none`` on the ResNet-50-sized
#: benchmark model, which made ``auto`` keep the statistics as they were).
RESOLUTION = 1e-12

logger = logging.getLogger(__name__)


def choose_by_score(
    job: CalibrationJob,
    data: DataLike,
    reading: Reading,
    clean_session,
    bar: Optional[Progress] = None,
    *,
    labels: bool = True,
    references: Optional[dict] = None,
) -> Decision:
    """``auto``: estimate every candidate on the fit samples, score it on the held-out ones, :func:`decide`.

    Sets ``job.chosen``, ``job.scores`` (mean divergence from the clean outputs),
    ``job.scored_on``, ``job.in_sample``, and ``job.note`` when the choice is not the lowest
    mean score (why). Returns the :class:`Decision`.

    Args:
        job: the job after ``measure_noisy`` (``clean_run``, ``noisy_run``, ``holdout`` set).
        data: the calibration data.
        reading: how the data is read and sessions run.
        clean_session: the clean model's session (the reference outputs).
        bar: advanced once per scored batch.
        labels: read the calibration data's labels: on a classifier, top-1 per held-out
            sample may override the divergence (:func:`decide`).
        references: the clean outputs on the scored parts, kept between calls on the same
            clean model, data and hold-out (a sweep's chips); filled here on first use.
    """
    clean_run, noisy_run = job.clean_run, job.noisy_run
    assert clean_run is not None and noisy_run is not None and job.holdout is not None
    fit_noisy, fit_clean = noisy_run.fit, clean_run.fit
    in_sample = fit_noisy is None or fit_clean is None
    if fit_noisy is None or fit_clean is None:
        fit_noisy, fit_clean = noisy_run.stats, clean_run.stats
    candidates = {
        name: get_method(name).statistics(job.names, job.reference, fit_noisy, fit_clean)
        for name in job.strategy.candidates
    }
    if in_sample:
        warn_once(
            logger,
            "auto: no calibration batch had the 4 or more samples needed to hold some out; "
            "the candidates are scored on the samples they were estimated on",
        )
    scored = score_candidates(
        job.model,
        candidates,
        data,
        reading,
        OutputDivergenceScorer(clean_session, labels=labels, cache=references),
        select=None if in_sample else held_out(job.holdout),
        progress=bar,
    )
    decision = decide(scored.scores, scored.per_sample, scored.task)
    job.chosen, job.scores = decision.chosen, scored.scores
    job.scored_on = noisy_run.samples if in_sample else noisy_run.held
    job.in_sample = in_sample
    if decision.reason:
        where = "calibration (in-sample)" if in_sample else "held-out"
        job.note = f"auto chose '{decision.chosen}': {decision.reason.format(samples=f'{scored.samples} {where}')}"
    logger.info("auto: scores %s, chose %s%s", job.scores, job.chosen, f" ({job.note})" if decision.reason else "")
    return decision


@dataclass
class Decision:
    """Which candidate ``auto`` keeps, and why.

    Attributes:
        chosen: the candidate whose statistics are written.
        closest: the candidate kept on the divergence from the clean outputs alone.
        lowest: the candidate with the lowest mean score.
        reason: why ``chosen`` is not simply ``lowest`` (with a ``{samples}`` field for the
            scored samples), empty when it is.
        differences: per candidate, the mean per-sample score difference from ``closest``
            and its standard error (positive: worse than ``closest``).
        task: per candidate, the mean task metric on the scored samples (top-1 on labelled
            classifier data), None without one.
    """

    chosen: str
    closest: str
    lowest: str
    reason: str = ""
    differences: Optional[Dict[str, Tuple[float, float]]] = None
    task: Optional[Dict[str, float]] = None


def decide(
    scores: Dict[str, float],
    per_sample: Optional[Dict[str, np.ndarray]] = None,
    task: Optional[Dict[str, np.ndarray]] = None,
    *,
    within: float = WITHIN_NOISE,
) -> Decision:
    """``auto``'s rule: the simplest candidate whose score is not worse than the best beyond noise.

    1. Under severe noise (every mean score above :data:`~.scoring.SEVERE`) the scores do
       not rank the candidates: :func:`~.scoring.pick_candidate` falls back to Algorithm 1.
    2. Otherwise, among the candidates whose mean score is not above ``none``'s (never
       worse than doing nothing on its own score), the first in :data:`PREFERENCE` whose
       per-sample scores are not worse than the lowest-scoring candidate's by more than
       ``within`` standard errors of the paired differences (``closest``). Without
       per-sample scores, the lowest mean (ties to the earlier candidate).
    3. ``task`` (a per-sample task metric, higher is better: top-1 on labelled classifier
       data) overrides ``closest`` only where a candidate is better than it beyond the same
       noise, and never when ``closest`` reproduces the clean outputs exactly (score 0:
       the noise changed nothing that the scored samples show).

    Args:
        scores: mean score per candidate (lower is better), in order of preference on ties.
        per_sample: each candidate's score per scored sample, the same samples in the same order.
        task: each candidate's task metric per scored sample.
        within: standard errors a difference must exceed to count.
    """
    order = list(scores)
    best = min(scores.values())
    lowest = next(name for name in order if scores[name] <= best + RESOLUTION)  # ties to the earlier
    if scores[lowest] > SEVERE or not per_sample or set(per_sample) != set(order):
        closest = pick_candidate(scores)
        decision = Decision(closest, closest, lowest)
        if closest != lowest:
            decision.reason = (
                f"every candidate's outputs diverge from the clean model's by more than {SEVERE:g} on the {{samples}} "
                f"samples scored (lowest: '{lowest}', {scores[lowest]:.3g}): the noise is too strong for the score to "
                f"rank them, so '{closest}' is kept"
            )
        return _with_task(decision, scores, task, within)
    preference = [n for n in PREFERENCE if n in scores] + [n for n in order if n not in PREFERENCE]
    ceiling = scores.get("none", np.inf)
    eligible = [n for n in preference if scores[n] <= ceiling + RESOLUTION or n == lowest]
    closest = next(n for n in eligible if not _beyond_noise(per_sample[n], per_sample[lowest], within))
    differences = {n: _paired(per_sample[n], per_sample[closest]) for n in order}
    decision = Decision(closest, closest, lowest, differences=differences)
    if closest != lowest:
        mean, error = _paired(per_sample[closest], per_sample[lowest])
        decision.reason = (
            f"'{lowest}' scored lower ({scores[lowest]:.3g} against {scores[closest]:.3g}), within the noise of the "
            f"{{samples}} samples scored (difference {mean:.2g} +- {error:.2g}), so the simpler '{closest}' is kept"
        )
    return _with_task(decision, scores, task, within)


def _with_task(
    decision: Decision, scores: Dict[str, float], task: Optional[Dict[str, np.ndarray]], within: float
) -> Decision:
    """Step 3 of :func:`decide`: a candidate better on the task metric beyond noise replaces ``closest``."""
    closest = decision.closest
    if task is None or set(task) != set(scores):
        return decision
    decision.task = {n: float(np.mean(task[n])) for n in scores}
    if scores[closest] == 0.0:
        return decision
    order = list(scores)
    better = [n for n in order if n != closest and _beyond_noise(task[n], task[closest], within)]
    if not better:
        return decision
    preference = [n for n in PREFERENCE if n in better] + [n for n in better if n not in PREFERENCE]
    top = max(better, key=lambda n: (float(task[n].mean()), -preference.index(n)))
    chosen = next(n for n in preference if not _beyond_noise(task[top], task[n], within))
    mean, error = _paired(task[chosen], task[closest])
    decision.chosen = chosen
    decision.reason = (
        f"top-1 on the {{samples}} labelled samples scored {100 * task[chosen].mean():.1f}% against "
        f"{100 * task[closest].mean():.1f}% for '{closest}', the closest to the clean outputs "
        f"({100 * mean:+.1f} +- {100 * error:.1f} points)"
    )
    return decision


def _paired(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """Mean of the per-sample differences ``a - b`` and its standard error (0 with one sample)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.size < 2:
        return float(d.mean()) if d.size else 0.0, 0.0
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def _beyond_noise(a: np.ndarray, b: np.ndarray, within: float) -> bool:
    """Whether ``a`` is above ``b`` sample by sample by more than ``within`` standard errors.

    With fewer than two samples nothing can be told apart from noise.
    """
    if np.size(a) < 2:
        return False
    mean, error = _paired(a, b)
    return mean > within * error and mean > RESOLUTION


def guard_chip(job: CalibrationJob, data: DataLike, reading: Reading) -> None:
    """``auto`` on a chip without its clean model: Algorithm 1 against the statistics as they are.

    Without a clean model there are no clean outputs to compare with; when the calibration
    data has labels and the model is a classifier, the two are compared by top-1 on the
    held-out samples, and Algorithm 1 is kept only if it is not worse (BatchNorms trained on
    other data than the calibration data can lose more to Algorithm 1 than the noise costs).
    Without labels the result cannot be checked, and the note says so.
    """
    noisy_run = job.noisy_run
    assert noisy_run is not None and job.holdout is not None
    fit = noisy_run.fit
    in_sample = fit is None
    if fit is None:
        fit = noisy_run.stats
    candidates = {
        method.name: method.statistics(job.names, job.reference, fit, None) for method in (Paper(), Unchanged())
    }
    job.chosen, job.in_sample = "paper", in_sample
    job.note = (
        "Algorithm 1 ('paper') ran and could not be checked: without the clean model (--reference) "
        "or labels in the calibration data nothing tells whether it helped; measure it with --test"
    )
    try:
        scored = score_candidates(
            job.model,
            candidates,
            data,
            reading,
            Top1Scorer(job.model.graph.output[0].name),
            select=None if in_sample else held_out(job.holdout),
        )
    except (UnscorableError, NothingScoredError):
        return
    scores, total = scored.scores, scored.samples
    job.chosen = scored.chosen
    job.scores, job.scored_on = scores, total
    where = "calibration (in-sample)" if in_sample else "held-out"
    job.note = (
        f"no clean model: 'auto' compared Algorithm 1 with the statistics as they were by top-1 on {total} {where} "
        f"labelled samples ({100 * scores['paper']:.1f}% against {100 * scores['none']:.1f}%) and kept "
        + ("Algorithm 1" if job.chosen == "paper" else "the statistics as they were")
    )
