"""``auto`` against its own candidates, chip by chip: writes ``docs/generated/auto_grid.md``.

For every task (the digits samples, the PP-OCR direction classifier, and with the real-model
cache MobileNet-v2, DBNet and PicoDet), noise kind, eta and chip seed, one calibration runs
step by step (:class:`nabn_onnx.Calibrator`'s steps, the clean measurements shared by the
chips of one model) and the test metric is measured for each of ``auto``'s candidates
(``none``, ``paper``, ``delta``, ``blend``: the statistics each writes from the full
calibration set) and for what ``auto`` chose (the chosen candidate's statistics are what
``calibrate`` writes, so ``auto``'s number is its candidate's). A row passes when
``auto >= max(candidates) - 0.5`` points and ``auto >= none``.

Run from the repository root::

    NABN_REAL_CACHE=/work/real-cache python -m tools.results.auto_grid
    python -m tools.results.auto_grid --only resnet_fused,ppocr_cls --seeds 1   # a quick look

Tasks whose files are missing (the cache not built) are skipped with a line saying so.
``--results FILE.jsonl`` keeps every chip's row; a rerun with the same file resumes (chips
already there are not run again; delete the file after changing ``auto``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from nabn_onnx.calibration import CalibrationJob, Calibrator

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
DOCS = ROOT / "docs" / "generated"
CACHE = Path(os.environ.get("NABN_REAL_CACHE", Path.home() / ".cache" / "nabn-onnx" / "real"))
#: auto's candidates, in the order the page shows them.
COLUMNS = ("none", "paper", "delta", "blend")
#: A row passes when auto is at least the best candidate minus this (points).
TOLERANCE = 0.5


@dataclass(frozen=True)
class Task:
    """One model of the grid.

    Attributes:
        model: the model file (``{samples}``/``{cache}`` filled in); per noise kind in ``models``.
        calib: calibration ``.npz`` (its first ``calib_samples`` samples are used).
        test: test ``.npz`` (its first ``test_samples``, None: all).
        metric: the task metric (:func:`nabn_onnx.evaluate`), one number.
        batch_size: calibration and evaluation batch.
        grids: ``{noise kind: etas}``; eta 0 (one chip: the noise-free reference, where ``auto``
            must return the model unchanged) is shown apart and not counted.
        models: a model file per noise kind instead of ``model``.
        cache: needs the real-model cache.
    """

    model: str
    calib: str
    test: str
    metric: str
    batch_size: int
    calib_samples: Optional[int]
    test_samples: Optional[int]
    grids: Dict[str, Tuple[float, ...]]
    models: Dict[str, str] = field(default_factory=dict)
    cache: bool = False


# Noise levels where the methods differ (docs/generated/results_methods.md, results_ocr.md,
# results_real.md): vanilla degraded or collapsed, the candidates apart by a point or more.
TASKS: Dict[str, Task] = {
    "resnet_fused": Task(
        "{samples}/resnet_fused.onnx",
        "{samples}/digits_calib.npz",
        "{samples}/digits_test.npz",
        "top1",
        64,
        192,
        None,
        {"mul": (0.0, 0.3), "add": (0.01,)},
    ),
    "mobilenet_fused": Task(
        "{samples}/mobilenet_fused.onnx",
        "{samples}/digits_calib.npz",
        "{samples}/digits_test.npz",
        "top1",
        64,
        192,
        None,
        {"mul": (0.0, 0.1), "add": (0.01,)},
    ),
    "ppocr_cls": Task(
        "{samples}/third_party/ppocr_cls.onnx",
        "{samples}/third_party/ocr_calib.npz",
        "{samples}/third_party/ocr_test.npz",
        "top1",
        64,
        192,
        None,
        {"mul": (0.0, 0.1), "add": (0.003, 0.03)},
    ),
    # top1 on crops labelled with the clean model's top-1: agreement with clean
    "mobilenet_v2": Task(
        "{cache}/mobilenet_v2_fused.onnx",
        "{cache}/mobilenet_calib.npz",
        "{cache}/mobilenet_test.npz",
        "top1",
        32,
        128,
        256,
        {"mul": (0.0, 0.04), "add": (0.00035,)},
        models={"add": "{cache}/mobilenet_v2_bn.onnx"},  # the paper's ADD noise is on unfolded weights
        cache=True,
    ),
    "dbnet": Task(
        "{cache}/dbnet.onnx",
        "{cache}/dbnet_calib.npz",
        "{cache}/dbnet_test.npz",
        "dbnet:miou",
        16,
        32,
        None,
        {"mul": (0.0, 0.2), "add": (0.01,)},
        cache=True,
    ),
    "picodet": Task(
        "{cache}/layout_cdla.onnx",
        "{cache}/layout_calib.npz",
        "{cache}/layout_test.npz",
        "picodet:map50",
        8,
        16,
        None,
        {"mul": (0.0, 0.1), "add": (0.00045,)},
        cache=True,
    ),
}


def _path(template: str, cache: Path) -> Path:
    return Path(template.format(samples=SAMPLES, cache=cache))


def _cut(path: Path, count: Optional[int]) -> Dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {key: archive[key][:count] for key in archive.files}


def chip_key(task: str, kind: str, eta: float, seed: int) -> str:
    """The identity of one row (what ``--results`` resumes by)."""
    return f"{task}/{kind}/{eta:g}/{seed}"


class TestRun:
    """A model's outputs on the test set, batch by batch, and the task metric computed from them."""

    def __init__(self, model, test: dict, metric, batch_size: int):
        import onnxruntime as ort

        from nabn_onnx.evaluation import make_metric

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        fixed = session.get_inputs()[0].shape[0]
        step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
        labels = test.get("labels")
        count = len(test[inputs[0]])
        self.batches: List[List[np.ndarray]] = []
        self.labels: List[Optional[np.ndarray]] = []
        measure = make_metric(metric)
        every = getattr(measure, "all_outputs", False)
        for lo in range(0, count, step):
            outputs = session.run(None, {name: test[name][lo : lo + step] for name in inputs})
            part = None if labels is None else labels[lo : lo + step]
            measure.update(outputs if every else outputs[0], part)
            self.batches.append(outputs)
            self.labels.append(part)
        result = measure.result()
        if isinstance(result, dict):  # a metric of several numbers: the grid reads the first
            result = next(iter(result.values()))
        self.value = float(result)

    def divergence(self, clean: TestRun) -> np.ndarray:
        """Per test sample, the divergence from ``clean``'s outputs that ``auto`` scores (:class:`OutputDivergence`)."""
        from nabn_onnx.calibration import OutputDivergence

        meter = OutputDivergence()
        for reference, outputs in zip(clean.batches, self.batches):
            meter.update(reference, outputs)
        return meter.per_sample()

    def top1(self) -> Optional[np.ndarray]:
        """1 or 0 per test sample (classified right), for a classifier of integer labels; else None."""
        from nabn_onnx.calibration.scoring import is_classifier_of

        right = []
        for outputs, labels in zip(self.batches, self.labels):
            if not is_classifier_of(outputs[0], labels):
                return None
            right.append((outputs[0].argmax(axis=1) == labels).astype(np.float64))
        return np.concatenate(right)


class CleanJob:
    """One model's clean side, shared by its chips: the prepared job, the clean session and test outputs."""

    def __init__(self, model: Path, calib: dict, test: dict, metric, batch_size: int):
        import nabn_onnx as nb

        self.calibrator = nb.Calibrator(nb.CalibrationConfig(method="auto", data=nb.DataSettings(batch_size)))
        calibrator = self.calibrator
        # the prepared job of a clean model (noise= only decides that the model is clean)
        job = calibrator.with_noise(nb.make_noise("mul", 0.0, seed=0)).prepare(str(model))
        calibrator.plan_holdout(job, calib)
        calibrator.measure_inserted(job, calib)
        calibrator.measure_clean(job, calib)
        self.session = calibrator.clean_session(job)
        self.job = job
        self.test = TestRun(job.model, test, metric, batch_size)

    def chip(self, noise) -> Tuple[Calibrator, CalibrationJob]:
        """``(calibrator, job)`` of one chip, up to the noisy statistics (the clean model left as it is)."""
        calibrator = self.calibrator.with_noise(noise)
        job = dataclasses.replace(self.job, model=copy.deepcopy(self.job.model))
        calibrator.put_noise(job)
        return calibrator, job


def resample(values: Dict[str, float], runs: Dict[str, TestRun], clean: TestRun, size: int, draws: int) -> dict:
    """Both rules on ``draws`` random hold-outs of ``size`` test samples: their mean ``auto - best`` (points).

    The held-out samples ``auto`` scores are one draw; this repeats the choice on other
    draws (test samples and whole-set statistics, so only the scored samples change) to
    show what each rule costs on average, not on one lucky or unlucky draw.
    """
    from nabn_onnx.calibration import pick_candidate
    from nabn_onnx.calibration.choice import decide

    per_sample = {name: run.divergence(clean) for name, run in runs.items()}
    task: Optional[Dict[str, np.ndarray]] = {}
    for name, run in runs.items():
        right = run.top1()
        task = None if task is None or right is None else {**task, name: right}
    count = len(next(iter(per_sample.values())))
    if not size or size > count:
        return {}
    rng = np.random.default_rng(0)
    best = max(values.values())
    lost: Dict[str, List[float]] = {"before": [], "now": []}
    for _ in range(draws):
        pick = rng.choice(count, size, replace=False)
        scores = {name: float(v[pick].mean()) for name, v in per_sample.items()}
        sub = {name: v[pick] for name, v in per_sample.items()}
        labelled = None if task is None else {name: v[pick] for name, v in task.items()}
        lost["before"].append(100 * (values[pick_candidate(scores)] - best))
        lost["now"].append(100 * (values[decide(scores, sub, labelled).chosen] - best))
    closest = min(per_sample, key=lambda name: per_sample[name].mean())
    return {"closest": closest, **{k: float(np.mean(v)) for k, v in lost.items()}}


def run_chip(clean: CleanJob, noise, calib: dict, test: dict, metric, batch_size: int, draws: int = 1000) -> dict:
    """Every candidate's test metric on one chip, ``auto``'s choice and what it was scored on."""
    from nabn_onnx.calibration import new_stats, pick_candidate
    from nabn_onnx.calibration.choice import choose_by_score  # what Calibrator.choose runs for auto (README)
    from tools.common import write_bn_stats

    calibrator, job = clean.chip(noise)
    started = time.perf_counter()
    calibrator.measure_noisy(job, calib)
    assert job.noisy_run is not None and job.clean_run is not None
    noisy, clean_stats = job.noisy_run.stats, job.clean_run.stats
    runs = {}
    for name in COLUMNS:
        write_bn_stats(job.model, new_stats(name, job.names, job.reference, noisy, clean_stats))
        runs[name] = TestRun(job.model, test, metric, batch_size)
    values = {name: run.value for name, run in runs.items()}
    chose_started = time.perf_counter()
    decision = choose_by_score(job, calib, calibrator.config.reading(job.plan), clean.session)
    choose_seconds = time.perf_counter() - chose_started
    assert job.scores is not None
    lowest_rule = pick_candidate(job.scores)  # the rule before the paired test: the lowest mean score
    return {
        "values": values,
        "auto": values[job.chosen],
        "chosen": job.chosen,
        "before": values[lowest_rule],
        "chosen_before": lowest_rule,
        "scores": job.scores,
        "differences": decision.differences,
        "task": decision.task,
        "scored_on": job.scored_on,
        "in_sample": job.in_sample,
        "note": job.note,
        "resampled": resample(values, runs, clean.test, job.scored_on, draws),
        "choose_seconds": round(choose_seconds, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _done(results: Optional[Path]) -> Dict[str, dict]:
    """The rows already in the ``--results`` file, by key."""
    done: Dict[str, dict] = {}
    if results is not None and results.exists():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    return done


def run_grid(
    names: List[str], seeds: int, cache: Path, results: Optional[Path], tolerance: float, draws: int = 1000
) -> List[dict]:
    """Every chip's row of the tasks ``names`` (resuming from ``results``)."""
    import nabn_onnx as nb

    done = _done(results)
    rows = []
    for name in names:
        task = TASKS[name]
        files = [task.calib, task.test, task.model, *task.models.values()]
        missing = [str(_path(f, cache)) for f in files if not _path(f, cache).exists()]
        if missing:
            print(f"[{name}] skipped: {', '.join(missing)} missing", flush=True)
            continue
        batch = task.batch_size
        calib = _cut(_path(task.calib, cache), task.calib_samples)
        test = _cut(_path(task.test, cache), task.test_samples)
        for kind, etas in task.grids.items():
            model = _path(task.models.get(kind, task.model), cache)
            clean: Optional[CleanJob] = None
            for eta in etas:
                for seed in range(seeds if eta else 1):  # without noise every chip is the same
                    key = chip_key(name, kind, eta, seed)
                    if key in done:
                        rows.append(done[key])
                        continue
                    if clean is None:
                        clean = CleanJob(model, calib, test, task.metric, batch)
                    noise = nb.make_noise(kind, eta, seed=seed)
                    row = run_chip(clean, noise, calib, test, task.metric, batch, draws)
                    row.update(key=key, task=name, noise=kind, eta=eta, seed=seed, metric=task.metric)
                    row.update(clean=clean.test.value)
                    row.update(calib=len(next(iter(calib.values()))), test=len(next(iter(test.values()))))
                    rows.append(row)
                    print(line_of(row, tolerance), flush=True)
                    if results is not None:
                        with results.open("a") as out:
                            out.write(json.dumps(row) + "\n")
    return rows


def margin(row: dict, column: str = "auto") -> float:
    """``auto - max(candidates)`` in points (``column="before"``: the lowest-score rule's pick)."""
    return 100.0 * (row[column] - max(row["values"].values()))


def passes(row: dict, tolerance: float, column: str = "auto") -> bool:
    """``auto`` within ``tolerance`` points of its best candidate and not below ``none``."""
    return margin(row, column) >= -tolerance - 1e-9 and row[column] >= row["values"]["none"]


def passes_clean(row: dict, tolerance: float, column: str = "auto") -> bool:
    """:func:`passes` with the best candidate counted at most at the clean model's figure."""
    best = min(max(row["values"].values()), row["clean"])
    return 100.0 * (row[column] - best) >= -tolerance - 1e-9 and row[column] >= row["values"]["none"]


def line_of(row: dict, tolerance: float) -> str:
    """One chip as a progress line."""
    values = " ".join(f"{k} {100 * v:.2f}" for k, v in row["values"].items())
    scores = ", ".join(f"{k} {v:.4g}" for k, v in (row["scores"] or {}).items())
    flag = "" if passes(row, tolerance) else "  <-- below best - tolerance"
    return (
        f"[{row['task']}] {row['noise']} {row['eta']:g} chip {row['seed']}: {values}; auto {100 * row['auto']:.2f} "
        f"({row['chosen']}, {margin(row):+.2f}; lowest-score rule: {row['chosen_before']}); scores on "
        f"{row['scored_on']}: {scores}; mean over hold-outs: {_expected(row)}; {row['seconds']}s{flag}"
        + (f"\n    {row['note']}" if row["note"] else "")
    )


def _expected(row: dict) -> str:
    """``before / now``: the mean ``auto - best`` over random hold-outs (:func:`resample`)."""
    drawn = row.get("resampled") or {}
    return f"{drawn['before']:+.2f} / {drawn['now']:+.2f}" if drawn else "n/a"


def _cell(value: float, best: float) -> str:
    return f"**{100 * value:.2f}**" if value == best else f"{100 * value:.2f}"


def _summary(rows: List[dict], tolerance: float, column: str) -> str:
    strict = sum(passes(r, tolerance, column) for r in rows)
    capped = sum(passes_clean(r, tolerance, column) for r in rows)
    worst = min((margin(r, column) for r in rows), default=0.0)
    below = sum(r[column] < r["values"]["none"] for r in rows)
    drawn = [r["resampled"]["now" if column == "auto" else "before"] for r in rows if r.get("resampled")]
    expected = f"; over random hold-outs, `auto - best` {np.mean(drawn):+.2f} points on average" if drawn else ""
    return (
        f"{strict} of {len(rows)} rows pass ({capped} with the best counted at most at the clean model's figure); "
        f"worst `auto - best` {worst:+.2f} points; below `none` on {below} row(s){expected}"
    )


def _failures(rows: List[dict], tolerance: float, zero: List[dict]) -> List[str]:
    """What the failing rows have in common, computed from them (``zero``: the noise-free rows)."""
    failing = [r for r in rows if not passes(r, tolerance)]
    if not failing:
        return []
    above = [r for r in failing if max(r["values"].values()) > r["clean"] + tolerance / 100]
    closest = [r for r in above if (r.get("resampled") or {}).get("closest") == r["chosen"]]
    rest = [r for r in failing if r not in above]
    tasks = sorted({r["task"] for r in above})
    without = [
        f"{z['task']} {_gain(z):+.2f} points ({_best(z)})" for z in zero if z["task"] in tasks and _gain(z) > tolerance
    ]
    text = (
        f"- {len(above)} failing row(s) ({', '.join(tasks) or 'none'}) have a candidate above the clean model itself "
        "(by more than the tolerance): a calibration that beats the noise-free network is adapting it to the test "
        "data, not undoing the noise. `auto` compares with the clean outputs, so it keeps the candidate closest to "
        f"them; on {len(closest)} of these rows that is also the candidate closest to the clean outputs on the whole "
        "test set (column `closest`)."
    )
    if without:
        text += (
            " Without any noise the best candidate is already above clean by as much ("
            + "; ".join(without)
            + "), where `auto` must return the model unchanged."
        )
    out = [text]
    if rest:
        named = ", ".join(f"{r['task']} {r['noise']} {r['eta']:g} chip {r['seed']}" for r in rest)
        out.append(
            f"- {len(rest)} other failing row(s) ({named}): candidates within the noise of the scored samples "
            "(see `why`, and the mean over random hold-outs)."
        )
    return out


def _best(row: dict) -> str:
    return max(row["values"], key=lambda name: row["values"][name])


def _gain(row: dict) -> float:
    """The best candidate's metric minus the clean model's, in points."""
    return 100.0 * (max(row["values"].values()) - row["clean"])


def render(rows: List[dict], command: str, seconds: float, tolerance: float, resumed: int = 0) -> str:
    """The Markdown page: the noisy rows (counted), then the noise-free ones (eta 0, apart)."""
    zero = [r for r in rows if not r["eta"]]
    rows = [r for r in rows if r["eta"]]
    lines = [
        "# `auto` against its own candidates",
        "",
        (
            f"Made by `{command}` (the real networks from the cache `$NABN_REAL_CACHE` names; {seconds:.0f} s on two "
            "shared cores"
            + (f", {resumed} rows read back from `--results`" if resumed else "")
            + "). One row per chip: the test metric (%) of the clean model, of each of `auto`'s candidates (the "
            "statistics each writes from the whole calibration set: `none` leaves them as they were, `paper` is "
            "Algorithm 1, `delta` the noise's change applied to the stored statistics, `blend` their average) and of "
            "what `auto` chose: **before**, the lowest mean score (the rule up to this change: on these rows the same "
            "choices as the code before it); **now**, the simplest candidate not worse than the "
            "lowest beyond the noise of the per-sample scores (`nabn_onnx.calibration.choice.decide`). A row passes "
            f"when `auto` is at least the best candidate minus {tolerance:g} point and not below `none`."
        ),
        "",
        f"- **now**: {_summary(rows, tolerance, 'auto')}.",
        f"- before: {_summary(rows, tolerance, 'before')}.",
        *_failures(rows, tolerance, zero),
        "",
        (
            "| model | noise | eta | chip | scored | clean | none | paper | delta | blend | closest | before (chose) "
            "| **auto** (chose) | auto - best | over hold-outs: before / now | why |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|---|",
    ]
    for r in rows:
        v = r["values"]
        best = max(v.values())
        cells = [_cell(v[c], best) for c in COLUMNS]
        mark = "" if passes(r, tolerance) else " **fails**"
        why = r["note"].split(": ", 1)[1] if r["note"] else ""
        closest = (r.get("resampled") or {}).get("closest", "")
        lines.append(
            f"| {r['task']} ({r['metric']}) | {r['noise']} | {r['eta']:g} | {r['seed']} | {r['scored_on']} "
            f"| {100 * r['clean']:.2f} | " + " | ".join(cells) + f" | {closest} "
            f"| {100 * r['before']:.2f} ({r['chosen_before']}) | {100 * r['auto']:.2f} ({r['chosen']}) "
            f"| {margin(r):+.2f}{mark} | {_expected(r)} | {why} |"
        )
    lines += [
        "",
        (
            "Without noise (eta 0, one chip; not counted above): `auto` must return the model unchanged (bit for "
            "bit), whatever a candidate would gain on the test data."
        ),
        "",
        "| model | clean | none | paper | delta | blend | **auto** (chose) | best - clean |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in zero:
        v = r["values"]
        cells = [_cell(v[c], max(v.values())) for c in COLUMNS]
        lines.append(
            f"| {r['task']} ({r['metric']}) | {100 * r['clean']:.2f} | "
            + " | ".join(cells)
            + f" | {100 * r['auto']:.2f} ({r['chosen']}) | {_gain(r):+.2f} |"
        )
    lines += [
        "",
        (
            "Models and data: the digits samples (`sample_models/`, 192 calibration digits, test 500), PP-OCR's "
            "text-direction classifier (`sample_models/third_party/`, 192 rendered calibration lines, test 640), and "
            "from the real-model cache (`tools.samples.make_real_models`) MobileNet-v2 (128 calibration crops; "
            "`top1` on 256 test crops labelled with the clean model's top-1, i.e. agreement with clean; ADD on the "
            "BatchNorm-kept export), DBNet (32 calibration pages, `dbnet:miou` on 48) and PicoDet (16 calibration "
            "pages, `picodet:map50` on 24)."
        ),
        "",
        (
            "Columns: `scored`, the held-out calibration samples `auto` scored its candidates on (a quarter of the "
            "calibration set); `closest`, the candidate whose outputs are closest to the clean model's on the whole "
            "test set (what `auto`'s score estimates from the scored samples); `over hold-outs`, the mean "
            "`auto - best` (points) when each rule chooses on 1000 random draws of as many test samples as `auto` "
            "scored (whole-set statistics, test labels for top-1): the cost of a rule beyond the one draw of the row; "
            "`why`, the report's note when the choice is not the lowest mean score."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(TASKS), help=f"comma-separated tasks of: {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=3, help="chips per noise setting (seeds 0..N-1)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="the real-model cache ($NABN_REAL_CACHE)")
    parser.add_argument("--results", type=Path, help="JSON-lines file of the chips' rows (a rerun resumes from it)")
    parser.add_argument("--draws", type=int, default=1000, help="random hold-outs per chip for the expected cost")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="points auto may trail its best candidate")
    parser.add_argument("--out", default=str(DOCS / "auto_grid.md"), help="the page ('-': print only)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    started = time.perf_counter()
    known = _done(args.results)
    rows = run_grid(names, args.seeds, args.cache, args.results, args.tolerance, args.draws)
    resumed = sum(row["key"] in known for row in rows)
    seconds = time.perf_counter() - started
    command = "python -m tools.results.auto_grid" + (f" --only {args.only}" if args.only != ",".join(TASKS) else "")
    command += f" --seeds {args.seeds}" if args.seeds != 3 else ""
    text = render(rows, command, seconds, args.tolerance, resumed)
    noisy = [r for r in rows if r["eta"]]
    print(f"now: {_summary(noisy, args.tolerance, 'auto')} ({seconds:.0f} s)")
    print(f"before: {_summary(noisy, args.tolerance, 'before')}")
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
