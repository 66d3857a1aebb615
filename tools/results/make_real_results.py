"""Writes ``docs/generated/results_real.md`` and its plots: the paper's Tables I-IV and Figure 1 in kind, on real networks.

Needs the cache built by ``tools/samples/make_real_models.py`` (same ``--cache`` / ``$NABN_REAL_CACHE``).
Run from the repository root::

    python -m tools.samples.make_real_models
    python -m tools.results.make_real_results            # all tasks; --only mobilenet,dbnet,layout

For every task, noise scale ``eta`` and chip (seed ``0..K-1``) it injects that chip's noise
into the model once and measures

* **vanilla**: the noisy chip, BatchNorm statistics untouched;
* one column per calibration method (``paper``: Algorithm 1 as published; ``auto``: the
  default): the same chip after :func:`nabn_onnx.calibrate` on the calibration data,

with :func:`nabn_onnx.run_sweep`, the library call behind the CLI's ``sweep`` (one
calibration per chip and method, every test set evaluated on the same calibrated model;
DBNet's and PicoDet's metrics give several numbers, ``dbnet:miou,dbnet:pixel-acc`` and
``picodet:map50,picodet:mar50``, which a sweep reports per metric). Each sweep appends its
chips to ``<cache>/results_real.<task>.<noise>.jsonl``, which a rerun resumes (chips already
there are not run again). MobileNet-v2 runs its noise kinds on two model files, one sweep
per chip seed and noise kind, in chip-major order. The rows are also gathered per task in
``<cache>/results_real.<task>.json`` (so tasks can be rerun one by one); the markdown is
rendered from those files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from nabn_onnx import diagnose, make_noise, run_sweep
from nabn_onnx.evaluation import SweepPlan, SweepSettings
from tools.samples.make_real_models import DEFAULT_CACHE

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "generated"
METHODS = ("paper", "auto")
# The paper's grids, thinned to the rows it reports for MobileNet-v2 (2 cores shared: ~4 min per chip).
MUL_ETAS = (0.02, 0.04, 0.10)
ADD_ETAS = (0.0002, 0.00035)
# The paper's MobileNet-v2 rows (ImageNet top-1, %): clean 71.88; eta -> (vanilla, NaBN).
PAPER_CLEAN = 71.88
PAPER = {
    "mul": {0.02: (49.61, 68.76), 0.04: (1.96, 67.97), 0.10: (0.12, 63.41)},
    "add": {0.0002: (67.23, 68.85), 0.00035: (54.97, 68.66)},
}

TASKS = {
    # MUL noise is the same on folded and unfolded weights (W s (1 + n) = (W (1 + n)) s), ADD is
    # not: the paper adds N_T N_S to the unfolded conv weights, so ADD runs on the BN-kept export.
    "mobilenet": dict(
        model="mobilenet_v2_fused.onnx",
        models={"add": "mobilenet_v2_bn.onnx"},
        calib="mobilenet_calib.npz",
        tests={"agreement": "mobilenet_test.npz", "top1-20": "mobilenet_labelled.npz"},
        metric="top1",
        batch_size=64,
        grids={"mul": MUL_ETAS, "add": ADD_ETAS},
    ),
    # Layout: the paper's full Table III grid (detection: ~6 min per chip and eta here). DBNet: one point
    # of Table IV's grid per noise and one beyond it: PP-OCRv4 det loses < 3 points of mIoU at MUL 0.10
    # and none at ADD 0.001.
    "dbnet": dict(
        model="dbnet.onnx",
        calib="dbnet_calib.npz",
        tests={"dbnet": "dbnet_test.npz"},
        metric="dbnet:miou,dbnet:pixel-acc",
        batch_size=16,
        grids={"mul": (0.10, 0.20), "add": (0.00025, 0.01)},
    ),
    "layout": dict(
        model="layout_cdla.onnx",
        calib="layout_calib.npz",
        tests={"layout": "layout_test.npz"},
        metric="picodet:map50,picodet:mar50",
        batch_size=8,
        grids={"mul": (0.05, 0.10), "add": (0.00035, 0.00045)},
    ),
}


# The runs of tools/results/mobilenet_limits.py behind the "What limits the agreement" table (MUL 0.02 and 0.1).
LIMITS_RUNS = (
    dict(rows=("oracle",), seeds=(0, 1, 2), batches=(64,)),
    dict(rows=("oracle", "base"), seeds=(0,), batches=(128,)),
    dict(rows=("base",), seeds=(0,), batches=(64,), refine=True),
    dict(rows=("base",), seeds=(0,), batches=(256,)),  # about 10 GB
    dict(rows=("more",), seeds=(0,), batches=(64,), more=768),
    dict(rows=("indomain", "bnkept"), seeds=(0,), batches=(64,)),
)


def results_file(cache: Path, name: str, kind: str) -> Path:
    """The sweep's JSON-lines results file of one task and noise kind (what a rerun resumes)."""
    return cache / f"results_real.{name}.{kind}.jsonl"


def flat(values, test: str, metric: Optional[str] = None) -> Dict[str, float]:
    """``{test: value}`` for a one-number metric, ``{test/metric: value}`` for each number of several."""
    if isinstance(values, dict):
        return {f"{test}/{name}": float(value) for name, value in values.items()}
    return {test if metric is None else f"{test}/{metric}": float(values)}


def task_rows(report, methods, tests: List[str]) -> List[dict]:
    """The page's rows of one sweep: per chip, ``vanilla`` and each method as ``{test[/metric]: value}``.

    ``tests`` are the sweep's test set names: a sweep's rows of one test set name it ``"test"``
    (its ``clean`` uses the name given).
    """
    rows: Dict[tuple, dict] = {}
    for r in report.rows:
        test = r["test"] if len(tests) > 1 else tests[0]
        chip = rows.setdefault(
            (r["noise"], r["eta"], r["seed"]),
            {"noise": r["noise"], "eta": r["eta"], "seed": r["seed"], "vanilla": {}, **{m: {} for m in methods}},
        )
        chip["vanilla"].update(flat(r["vanilla"], test, r.get("metric")))
        chip[r["method"]].update(flat(r["nabn"], test, r.get("metric")))
    return list(rows.values())


def run_task(
    name: str,
    cache: Path,
    seeds: int,
    methods=METHODS,
    grids: Optional[dict] = None,
    previous: Optional[dict] = None,
    save=None,
) -> dict:
    """Clean, vanilla and calibrated metrics of one task over its grids and ``seeds`` chips.

    One :func:`nabn_onnx.run_sweep` per chip seed and noise kind (chip-major: every eta gets
    its first chip before any gets a second, so an interrupted run still covers the whole
    grid), each appending to the task's results file of that kind
    (:func:`results_file`), which a rerun resumes: chips already there are not run again.
    ``previous`` (the task's stored JSON) only carries its time over; ``save(result)`` is
    called after every sweep.
    """
    task = TASKS[name]
    grids = grids or task["grids"]
    tests = {test: str(cache / path) for test, path in task["tests"].items()}
    settings = SweepSettings(method=tuple(methods), metric=task["metric"], batch_size=task["batch_size"])
    started = time.perf_counter()
    earlier = (previous or {}).get("seconds", 0) if (previous or {}).get("methods") == list(methods) else 0
    rows: List[dict] = []
    result = {"rows": rows, "seeds": seeds, "methods": list(methods), "models": {}}
    for seed in range(seeds):
        for kind, etas in grids.items():
            file = task.get("models", {}).get(kind, task["model"])
            store = results_file(cache, name, kind)
            report = run_sweep(
                str(cache / file),
                str(cache / task["calib"]),
                None,
                SweepPlan.of(kind, etas, [seed]),
                settings,
                tests=tests,
                results=store,
                resume=store.exists(),
            )
            clean: Dict[str, float] = {}
            for test, value in report.clean.items():  # type: ignore[union-attr]
                clean.update(flat(value, test))
            if kind not in result["models"]:
                result.setdefault("clean", clean)
                result["models"][kind] = {"file": file, "clean": clean}
                print(f"[{name}] {file}: clean {clean}", flush=True)
            for row in task_rows(report, methods, list(tests)):
                rows.append(row)
                print(
                    f"[{name}] {kind} {row['eta']} seed {seed}: "
                    + "; ".join(
                        f"{k} {' '.join(f'{100 * v:.1f}' for v in row[k].values())}" for k in ("vanilla", *methods)
                    ),
                    flush=True,
                )
            result["seconds"] = round(time.perf_counter() - started + earlier, 1)
            if save:
                save(result)
    result["seconds"] = round(time.perf_counter() - started + earlier, 1)
    return result


def run_diagnose(cache: Path) -> dict:
    """Figure 1 analogue: per-layer divergence of MobileNet-v2 under MUL 0.04, chip 0."""
    from nabn_onnx.evaluation.plots import plot_diagnose  # not public API (tools/README.md, "Private names")

    task = TASKS["mobilenet"]
    # 64 calibration crops in 2 batches: diagnose holds every BatchNorm output of a batch at
    # once (about 9 GB for 64 crops of MobileNet-v2 at 224 px), so batches of 32.
    report = diagnose(
        str(cache / task["model"]),
        str(cache / task["calib"]),
        noise=make_noise("mul", 0.04, seed=0),
        method="paper",
        batch_size=32,
        max_batches=2,
    )
    plot_diagnose(report, DOCS / "results_real_diagnose.png", title="MobileNet-v2, MUL eta 0.04, chip 0 (paper method)")
    return report.to_dict()


def stats(rows: List[dict], kind: str, eta: float, column: str, key: str) -> np.ndarray:
    return np.array([r[column][key] for r in rows if r["noise"] == kind and r["eta"] == eta])


def fmt(a: np.ndarray) -> str:
    return f"{100 * a.mean():.2f} ± {100 * a.std(ddof=1) if len(a) > 1 else 0:.2f}" if len(a) else "n/a"


def table(result: dict, kind: str, key: str, paper: bool = False) -> List[str]:
    """Markdown rows: eta, vanilla, each method (mean ± std over chips, min), and the paper's row."""
    methods = result["methods"]
    head = (
        ["eta", "chips", "vanilla"]
        + [f"NaBN `{m}`" for m in methods]
        + ["worst chip: vanilla / " + " / ".join(methods)]
    )
    if paper:
        head += ["paper vanilla (rel.)", "paper NaBN (rel.)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for eta in sorted({r["eta"] for r in result["rows"] if r["noise"] == kind}):
        cols = [stats(result["rows"], kind, eta, c, key) for c in ("vanilla", *methods)]
        cells = (
            [f"{eta:g}", str(len(cols[0]))]
            + [fmt(c) for c in cols]
            + [" / ".join(f"{100 * c.min():.1f}" for c in cols)]
        )
        if paper:
            p = PAPER[kind].get(eta)
            cells += (
                [f"{p[0]:.2f} ({100 * p[0] / PAPER_CLEAN:.1f})", f"{p[1]:.2f} ({100 * p[1] / PAPER_CLEAN:.1f})"]
                if p
                else ["", ""]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(result: dict, key: str, path: Path, title: str, paper: bool = False, ylabel: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("mul", "add") if any(r["noise"] == k for r in result["rows"])]
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4))
    axes = np.atleast_1d(axes)
    colors = {"vanilla": "tab:red", "paper": "tab:blue", "auto": "tab:green"}
    for ax, kind in zip(axes, kinds):
        etas = sorted({r["eta"] for r in result["rows"] if r["noise"] == kind})
        for column in ("vanilla", *result["methods"]):
            data = [stats(result["rows"], kind, e, column, key) for e in etas]
            mean = np.array([100 * d.mean() for d in data])
            ax.plot(
                etas, mean, "o-", color=colors.get(column), label=column if column == "vanilla" else f"NaBN {column}"
            )
            ax.fill_between(
                etas, [100 * d.min() for d in data], [100 * d.max() for d in data], alpha=0.15, color=colors.get(column)
            )
        if paper:
            pe = sorted(PAPER[kind])
            ax.plot(
                pe,
                [100 * PAPER[kind][e][0] / PAPER_CLEAN for e in pe],
                "x--",
                color="tab:red",
                alpha=0.6,
                label="paper vanilla (acc / clean)",
            )
            ax.plot(
                pe,
                [100 * PAPER[kind][e][1] / PAPER_CLEAN for e in pe],
                "x--",
                color="tab:blue",
                alpha=0.6,
                label="paper NaBN (acc / clean)",
            )
        ax.axhline(100 * result["clean"][key], ls=":", color="gray", label="clean")
        if etas[-1] > 10 * etas[0]:
            ax.set_xscale("log")
        ax.set_xlabel(f"{kind.upper()} eta")
        ax.set_ylabel(ylabel or key)
        ax.set_title(f"{title}: {kind.upper()}")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def check_targets(result: dict) -> List[str]:
    """The issue's targets on the MobileNet-v2 agreement, each with its measured value."""
    rows, out = result["rows"], []
    for eta, target in ((0.02, 0.99), (0.10, 0.95)):
        for m in result["methods"]:
            got = stats(rows, "mul", eta, m, "agreement")
            if len(got):
                out.append(
                    f"- agreement at MUL {eta:g}, `{m}`: mean {100 * got.mean():.2f}% (worst chip "
                    f"{100 * got.min():.2f}%), target >= {100 * target:.0f}%: "
                    f"**{'met' if got.mean() >= target else 'not met'}**"
                )
    for m in result["methods"]:
        below = [(r["noise"], r["eta"], r["seed"], k) for r in rows for k in r["vanilla"] if r[m][k] < r["vanilla"][k]]
        out.append(
            f"- `{m}` below vanilla on a chip: "
            + (", ".join(f"{n} {e:g} seed {s} ({k})" for n, e, s, k in below) or "never")
        )
    return out


def readme_table(results: dict) -> str:
    """The compact table the README quotes: mean over chips, % (paper's accuracy / clean in parentheses)."""
    r = results["mobilenet"]
    lines = [
        (
            "| MobileNet-v2, agreement with clean top-1 % | chips | vanilla | NaBN `paper` | NaBN `auto` (default) "
            "| paper: vanilla / NaBN, % of clean |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("mul", "add"):
        for eta in sorted({row["eta"] for row in r["rows"] if row["noise"] == kind}):
            cols = [stats(r["rows"], kind, eta, c, "agreement") for c in ("vanilla", *r["methods"])]
            p = PAPER[kind].get(eta)
            ref = f"{100 * p[0] / PAPER_CLEAN:.1f} / {100 * p[1] / PAPER_CLEAN:.1f}" if p else ""
            lines.append(
                f"| {kind.upper()} eta={eta:g} | {len(cols[0])} | "
                + " | ".join(f"{100 * c.mean():.1f}" for c in cols)
                + f" | {ref} |"
            )
    for name, keys in (("dbnet", ("dbnet/dbnet:miou",)), ("layout", ("layout/picodet:map50", "layout/picodet:mar50"))):
        if name not in results:
            continue
        d = results[name]
        for key in keys:
            for kind in ("mul", "add"):
                for eta in sorted({row["eta"] for row in d["rows"] if row["noise"] == kind}):
                    cols = [stats(d["rows"], kind, eta, c, key) for c in ("vanilla", *d["methods"])]
                    lines.append(
                        f"| {name} {key.split(':')[-1]} (clean {100 * d['clean'][key]:.1f}), "
                        f"{kind.upper()} eta={eta:g} | {len(cols[0])} | "
                        + " | ".join(f"{100 * c.mean():.1f}" for c in cols)
                        + " | |"
                    )
    return "\n".join(lines)


def limits_section(measured: Dict[str, float], mobilenet: dict) -> List[str]:
    """What limits the MobileNet-v2 agreement: ``tools/results/mobilenet_limits.py``'s rows, with the oracle's ceiling.

    The Table I rows of the same chips (``calibrate`` itself, ``paper`` and ``auto``) are shown beside them.
    """
    from tools.results.mobilenet_limits import table as limits_table

    etas = {float(k.split("|")[0]) for k in measured}
    measured = dict(measured)
    for row in mobilenet["rows"]:
        if row["noise"] == "mul" and row["eta"] in etas:
            for method in mobilenet["methods"]:
                key = f"{row['eta']:g}|{row['seed']}|calib 256, batch 64 (Table I: calibrate)|{method}"
                measured[key] = row[method]["agreement"]

    def best(prefix: str, eta: float) -> Tuple[float, str, List[int]]:
        """The best mean over chips among rows whose statistics start with ``prefix`` (on the most chips)."""
        by: Dict[str, Dict[int, float]] = {}
        for key, value in measured.items():
            e, seed, label, method = key.split("|")
            if float(e) == eta and label.startswith(prefix):
                by.setdefault(f"{label}, {method}", {})[int(seed)] = value
        if not by:
            return float("nan"), "", []
        most = max(len(v) for v in by.values())  # rows measured on fewer chips are not comparable
        name = max((k for k in by if len(by[k]) == most), key=lambda k: np.mean(list(by[k].values())))
        return float(np.mean(list(by[name].values()))), name, sorted(by[name])

    lines = [
        "### What limits the agreement: calibration data, batch size, method, and the oracle's ceiling",
        "",
        (
            "`python -m tools.results.mobilenet_limits` (rows added with `--rows`, `--etas`, `--seeds`, `--batches`; "
            "`--table-only` prints this table) recomputes one chip's statistics in several ways with the library's "
            "own pieces and scores each by agreement on the 512 test crops: Algorithm 1 batch size, more "
            "calibration crops of the same 18 photos, the methods `auto` chooses among (`paper`, `delta`, `blend`), "
            "and an **oracle** that measures the statistics on the test crops themselves (clean reference and "
            "noisy chip): about the best any BatchNorm recalibration can do on that chip (rows on the same chip "
            "that beat it do so by a crop or two of the 512). Agreement %, mean over the "
            "chips measured (per chip in parentheses; the `Table I` rows are the table above, the same chips "
            "through `calibrate`). `test photos, 256 other crops`: fresh crops of the 18 *test* photos (not the "
            "test crops), calibration data from the test photos' domain. `refine`: Algorithm 1's statistics "
            "re-measured twice with every BatchNorm in eval mode (not what `calibrate` does)."
        ),
        "",
        *limits_table(measured),
        "",
    ]
    for eta, target in ((0.02, 99.0), (0.1, 95.0)):
        oracle, oracle_row, chips = best("oracle", eta)
        if not chips:
            continue
        same = [
            row["auto"]["agreement"]
            for row in mobilenet["rows"]
            if row["noise"] == "mul" and row["eta"] == eta and row["seed"] in chips
        ]
        verdict = "below" if 100 * oracle < target else "at or above"
        line = (
            f"- MUL {eta:g}, chips {', '.join(map(str, chips))}: the oracle reaches {100 * oracle:.1f}% (best row: "
            f"{oracle_row}), {verdict} the {target:.0f}% target; `auto` from the 256 calibration crops reaches "
            f"{100 * np.mean(same):.1f}% on the same chips."
        )
        domain, domain_row, domain_chips = best("test photos", eta)
        if domain_chips:
            line += (
                f" Calibration crops of the test photos reach {100 * domain:.1f}% (chips "
                f"{', '.join(map(str, domain_chips))}; {domain_row})."
            )
        lines.append(line)
    lines += [
        "",
        (
            "MUL noise is `W (1 + N_T N_S)` with `N_T ~ N(eta, (0.2 eta)^2)` and `N_S ~ N(1, 0.1^2)`: a common "
            "gain of `1 + eta` on every weight, which is what collapses vanilla (compounding over 52 layers) "
            "and what per-channel statistics undo exactly, plus a per-element random part of relative spread "
            "about `eta * sqrt(0.2^2 + 0.1^2) = 0.22 eta` (0.45% at 0.02, 2.2% at 0.10). That part changes "
            "each output channel's response pattern, not only its mean and variance, so no BatchNorm statistics "
            "can remove it: it is what the oracle cannot recover, and where the oracle is below a target, "
            "that target is out of reach of NaBN on this chip whatever the calibration data, batch size "
            "or method."
        ),
        "",
    ]
    return lines


def fidelity_section(dbnet: dict, fidelity: dict) -> List[str]:
    """DBNet at ADD 0.00025: ``auto`` below vanilla on the rendered masks, explained by the clean-mask scores."""
    rows = fidelity["rows"]

    def col(column: str, key: str) -> np.ndarray:
        return np.array([row[key] for row in rows if row["column"] == column])

    vanilla, auto, paper = col("vanilla", "fidelity"), col("auto", "fidelity"), col("paper", "fidelity")
    return [
        "### Why `auto` is below vanilla at ADD eta 0.00025",
        "",
        (
            "At ADD 0.00025 the noisy chip scores *above the clean model* on every chip (vanilla mIoU "
            f"{fmt(stats(dbnet['rows'], 'add', 0.00025, 'vanilla', 'dbnet/dbnet:miou'))} against clean "
            f"{100 * dbnet['clean']['dbnet/dbnet:miou']:.2f}), and `auto` scores the clean model's figure. ADD "
            "noise is `W + N_T N_S` with mean `+eta` on every weight, the same on every chip, so the gain is a "
            "systematic shift of the text map that happens to suit our rendered masks, not chip luck (the "
            "chip-to-chip spread is 0.02 points), and more chips do not change it. Scored against the **clean "
            "model's own masks** (`python -m tools.results.dbnet_fidelity`; the clean model scores 100%), where no chip "
            "can beat clean, `auto` is closer to clean than vanilla on every chip:"
        ),
        "",
        *fidelity["lines"],
        "",
        (
            f"`auto` keeps {100 * auto.mean():.2f}% mIoU with the clean model's mask against vanilla's "
            f"{100 * vanilla.mean():.2f}% (worst chip {100 * auto.min():.2f} against {100 * vanilla.min():.2f}): "
            "at this row it undoes the noise, which is what calibration is for, and the vanilla advantage on "
            "the rendered masks is the noise's bias, not a calibration loss. `paper` (Algorithm 1 alone) moves "
            f"the model away from clean by itself at this low noise ({100 * paper.mean():.2f}% of the clean "
            "mask): its train-mode batches of 16 pages re-estimate every inserted BatchNorm."
        ),
        "",
    ]


def render(results: dict) -> str:
    lines = [
        "# Results on real networks",
        "",
        (
            "Generated by `python -m tools.samples.make_real_models && python -m tools.results.make_real_results` "
            "(models and data: see `tools/samples/make_real_models.py`). Mean ± standard deviation over "
            "simulated chips (seeds 0..K-1), noise as in `nabn_onnx.noise` (sigma_t = 0.2·eta, sigma_s = 0.1, "
            "N_T per element, no noise on biases). `paper` is Algorithm 1 as published, `auto` is the "
            "default method."
        ),
        "",
    ]
    if "mobilenet" in results:
        r = results["mobilenet"]
        lines += [
            "## MobileNet-v2 (torchvision's ImageNet weights): Tables I and II in kind",
            "",
            (
                f"Up to {r['seeds']} chips per eta (column `chips`), {r['seconds']:.0f} s. Two measures: **agreement** with the clean "
                "model's top-1 on 512 random crops of 18 photos (calibration: 256 crops of 18 other photos), "
                f"and top-1 on the 20 labelled ImageNet photos of foolbox (clean: "
                f"{100 * r['clean']['top1-20']:.0f}%; half of these photos are calibration sources). The paper's "
                "columns are its ImageNet top-1 (clean 71.88%) and, in parentheses, the same as a fraction of "
                "clean, the number comparable to our agreement."
            ),
            "",
        ]
        models = r.get("models", {})
        if models:
            lines += [
                "Models: "
                + "; ".join(
                    f"{k.upper()} rows on `{v['file']}` (clean agreement {100 * v['clean']['agreement']:.2f}%, top-1 "
                    f"{100 * v['clean']['top1-20']:.0f}% on the 20 photos)"
                    for k, v in models.items()
                )
                + ". MUL noise is the same on folded and unfolded weights; ADD noise is not (the paper adds it "
                "to the unfolded conv weights), so ADD runs on the BatchNorm-kept export.",
                "",
            ]
        for kind, title in (("mul", "Table I analogue: MUL noise"), ("add", "Table II analogue: ADD noise")):
            lines += [f"### {title}, agreement with clean top-1 (%)", "", *table(r, kind, "agreement", paper=True)]
            lines += ["", f"### {title}, top-1 on the 20 labelled photos (%)", "", *table(r, kind, "top1-20"), ""]
        lines += ["![MobileNet-v2 agreement](results_real_mobilenet.png)", "", "### Targets", ""]
        lines += [*check_targets(r), ""]
        if "limits" in results:
            lines += limits_section(results["limits"], r)
    if "diagnose" in results:
        d = results["diagnose"]
        lines += [
            "## Figure 1 analogue: per-layer divergence, MobileNet-v2, MUL eta 0.04",
            "",
            (
                "`diagnose` (KL/JS divergence of each BatchNorm output's histogram from the clean one, "
                "without and with `paper` calibration)."
            ),
            "",
            "![MobileNet-v2 divergence](results_real_diagnose.png)",
            "",
        ]
        layers = d["layers"]
        mean = {
            k: float(np.mean([layer[k] for layer in layers]))
            for k in ("kl_vanilla", "kl_nabn", "js_vanilla", "js_nabn")
        }
        worst = max(layers, key=lambda layer: layer["kl_vanilla"])
        lines += [
            (
                f"{len(layers)} BatchNorms (inserted after the fused convolutions), {d['samples']} calibration "
                f"crops: mean KL {mean['kl_vanilla']:.4f} -> {mean['kl_nabn']:.5f}, mean JS "
                f"{mean['js_vanilla']:.4f} -> {mean['js_nabn']:.5f} with calibration; the largest vanilla KL "
                f"is {worst['kl_vanilla']:.3f} at `{worst['layer']}` ({worst['kl_nabn']:.5f} calibrated). "
                "As in the paper's Figure 1, the divergence rises over the first blocks (0.001 at the stem, 0.03-0.09 from block 7 on) and calibration removes almost all of it."
            ),
            "",
        ]
    for name, title, keys in (
        (
            "layout",
            "Table III analogue: PicoDet layout detector (CDLA), mAP / mAR @ IoU 0.5",
            ("layout/picodet:map50", "layout/picodet:mar50"),
        ),
        (
            "dbnet",
            "Table IV analogue: DBNet text detector (PP-OCRv4 det), mIoU / pixel accuracy",
            ("dbnet/dbnet:miou", "dbnet/dbnet:pixel-acc"),
        ),
    ):
        if name not in results:
            continue
        r = results[name]
        lines += [
            f"## {title}",
            "",
            f"Up to {r['seeds']} chips per eta, {r['seconds']:.0f} s; clean: "
            + ", ".join(f"{k.split('/')[-1]} {100 * v:.2f}%" for k, v in r["clean"].items()),
            "",
        ]
        for key in keys:
            for kind in ("mul", "add"):
                if any(row["noise"] == kind for row in r["rows"]):
                    lines += [f"### {key.split('/')[-1]}, {kind.upper()} (%)", "", *table(r, kind, key), ""]
        lines += [f"![{name}](results_real_{name}.png)", ""]
        if name == "dbnet" and "fidelity" in results:
            lines += fidelity_section(r, results["fidelity"])
    if "collapse" in results:
        lines += [
            "## Where vanilla collapses: our noise against the paper's",
            "",
            (
                "Same weights, same equations (1)-(2), but the paper's vanilla MobileNet-v2 keeps 69% of its "
                "accuracy at MUL 0.02 and 2.7% at 0.04, ours about 70% agreement at 0.02 and about 40% at 0.04. "
                "`python -m tools.reference.noise_collapse_check` (vanilla agreement on the first 128 test crops, chips "
                "0 / 1, BatchNorm-kept export) tries the readings of the definition that could explain it:"
            ),
            "",
        ]
        lines += results["collapse"] + [
            "",
            (
                "Drawing N_T once per tensor instead of per element, or adding bias noise (torchvision's "
                "convolutions have none; only the classifier's), moves little. Putting the same MUL noise on "
                "the BatchNorm scale and shift as well reproduces the paper's collapse (about 54% at 0.02, "
                "1.6% at 0.04). So the paper's vanilla rows are consistent with noise on every parameter, "
                "BatchNorm's included (a loop over `model.parameters()`), although its text puts BatchNorm "
                "on the digital side; `nabn_onnx.noise` follows the text (only analog layers' weights), so "
                "its vanilla degrades at about twice the paper's eta. NaBN recalibrates the statistics, not "
                "a noisy scale/shift, so under the all-parameters reading the calibrated rows would also be "
                "somewhat lower than ours."
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--only",
        default="mobilenet,diagnose,collapse,limits,dbnet,fidelity,layout",
        help="tasks to (re)compute; the markdown is rendered from every stored result",
    )
    parser.add_argument("--seeds", type=int, default=3, help="chips per eta (default 3)")
    parser.add_argument("--render-only", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args(argv)
    # One file per task, so tasks can run in separate processes; results_real.json is the
    # older single-file store, read for tasks that have no file of their own.
    legacy = args.cache / "results_real.json"
    results = json.loads(legacy.read_text()) if legacy.exists() else {}
    for path in sorted(args.cache.glob("results_real.*.json")):
        results[path.name.split(".")[1]] = json.loads(path.read_text())
    if not args.render_only:
        for name in [s.strip() for s in args.only.split(",") if s.strip()]:

            def save(partial, name=name):
                results[name] = partial
                store = args.cache / f"results_real.{name}.json"
                tmp = store.with_suffix(".tmp")
                tmp.write_text(json.dumps(partial, indent=1))
                tmp.replace(store)

            if name == "diagnose":
                save(run_diagnose(args.cache))
            elif name == "collapse":
                from noise_collapse_check import table as collapse_table

                save(collapse_table(args.cache))
            elif name == "limits":
                from tools.results.mobilenet_limits import run as limits_run

                for kwargs in LIMITS_RUNS:
                    known = dict(results.get("limits", {}))
                    save({**known, **limits_run(args.cache, **kwargs, save=lambda new, k=known: save({**k, **new}))})
            elif name == "fidelity":
                from dbnet_fidelity import table as fidelity_table

                save(fidelity_table(args.cache))
            else:
                save(run_task(name, args.cache, args.seeds, previous=results.get(name), save=save))
    if "mobilenet" in results:
        plot(
            results["mobilenet"],
            "agreement",
            DOCS / "results_real_mobilenet.png",
            "MobileNet-v2",
            paper=True,
            ylabel="agreement with clean top-1 (%)",
        )
    for name, key in (("dbnet", "dbnet/dbnet:miou"), ("layout", "layout/picodet:map50")):
        if name in results:
            plot(results[name], key, DOCS / f"results_real_{name}.png", name, ylabel=key.split("/")[-1] + " (%)")
    (DOCS / "results_real.md").write_text(render(results))
    if "mobilenet" in results:
        print(readme_table(results))
    print(f"wrote {DOCS / 'results_real.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
