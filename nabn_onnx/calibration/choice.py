"""Choosing the statistics to write: ``auto``'s candidates, and the guard of a chip without its clean model.

Both score candidates with the one loop of :mod:`.scoring` on the samples the hold-out
policy (:mod:`.holdout`) leaves out; they differ only in the scorer: ``auto`` compares
with the clean model's outputs (:class:`~.scoring.OutputDivergenceScorer`), the chip guard,
which has no clean model, with the labels (:class:`~.scoring.Top1Scorer`). When nothing
could be held out, the candidates are scored in-sample, and the report says so.
"""

from __future__ import annotations

import logging
from typing import Optional

from ..data import DataLike
from ..logs import warn_once
from ..progress import Progress
from .config import Reading
from .holdout import held_out
from .job import CalibrationJob
from .methods import Paper, Unchanged, get_method
from .scoring import NothingScoredError, OutputDivergenceScorer, Top1Scorer, UnscorableError, score_candidates

__all__ = ["choose_by_score", "guard_chip"]

logger = logging.getLogger(__name__)


def choose_by_score(
    job: CalibrationJob, data: DataLike, reading: Reading, clean_session, bar: Optional[Progress] = None
) -> None:
    """``auto``: estimate every candidate on the fit samples and score it on the held-out ones.

    Sets ``job.chosen``, ``job.scores``, ``job.scored_on`` and ``job.in_sample``.
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
        OutputDivergenceScorer(clean_session),
        select=None if in_sample else held_out(job.holdout),
        progress=bar,
    )
    job.chosen, job.scores = scored.chosen, scored.scores
    logger.info("auto: scores %s, chose %s", job.scores, job.chosen)
    job.scored_on = noisy_run.samples if in_sample else noisy_run.held
    job.in_sample = in_sample


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
