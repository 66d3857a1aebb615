"""tools/results/: the real-network pages' experiment tables render the numbers they are given (no model is run)."""

from __future__ import annotations

import pytest

# the scripts' own table code, imported as modules of the tools package (Pillow: make_real_models)
make_real_results = pytest.importorskip("tools.results.make_real_results")
mobilenet_limits = pytest.importorskip("tools.results.mobilenet_limits")

MEASURED = {
    "0.02|0|none (vanilla)|": 0.70,
    "0.02|1|none (vanilla)|": 0.76,
    "0.02|0|calib 256, batch 64|paper": 0.95,
    "0.02|0|oracle (test crops), batch 64|paper": 0.99,
    "0.02|1|oracle (test crops), batch 64|paper": 0.97,
    "0.02|0|oracle (test crops), batch 64|delta": 0.985,
    "0.02|1|oracle (test crops), batch 64|delta": 0.987,
    # one chip only: higher, but not comparable with the two-chip rows
    "0.02|0|oracle (test crops), batch 128|paper": 1.0,
}
MOBILENET = {
    "methods": ["paper", "auto"],
    "rows": [
        {"noise": "mul", "eta": 0.02, "seed": s, "paper": {"agreement": p}, "auto": {"agreement": a}}
        for s, p, a in ((0, 0.96, 0.97), (1, 0.95, 0.96), (2, 0.5, 0.5))
    ],
}


def test_limits_table_means_and_order():
    lines = mobilenet_limits.table(MEASURED)
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert rows[0] == "none (vanilla)"
    assert rows.index("calib 256, batch 64") > max(i for i, r in enumerate(rows) if r.startswith("oracle"))
    oracle = next(line for line in lines if "batch 64 | paper" in line and "oracle" in line)
    assert "98.0 (0: 99.0 / 1: 97.0)" in oracle
    assert "73.0 (0: 70.0 / 1: 76.0)" in lines[2]


def test_limits_section_compares_the_oracle_with_auto_on_the_same_chips():
    text = "\n".join(make_real_results.limits_section(MEASURED, MOBILENET))
    # best two-chip oracle row is delta (98.6), not the one-chip batch-128 row (100.0)
    assert "MUL 0.02, chips 0, 1: the oracle reaches 98.6% (best row: oracle (test crops), batch 64, delta)" in text
    assert "below the 99% target" in text
    # auto on chips 0 and 1 only (chip 2 is not in the oracle's rows)
    assert "reaches 96.5% on the same chips" in text
    # the Table I rows of the same etas are shown beside the experiments
    assert "| calib 256, batch 64 (Table I: calibrate) | auto | 81.0 (0: 97.0 / 1: 96.0 / 2: 50.0) |" in text


def test_fidelity_section_summarizes_per_chip_scores():
    dbnet = {
        "clean": {"dbnet/dbnet:miou": 0.8889},
        "rows": [
            {"noise": "add", "eta": 0.00025, "seed": s, "vanilla": {"dbnet/dbnet:miou": v}}
            for s, v in ((0, 0.894), (1, 0.8938))
        ],
    }
    fidelity = {
        "lines": ["| chip | column | a | b |"],
        "rows": [
            {"seed": 0, "column": "vanilla", "truth": 0.894, "fidelity": 0.983},
            {"seed": 1, "column": "vanilla", "truth": 0.8938, "fidelity": 0.985},
            {"seed": 0, "column": "auto", "truth": 0.8889, "fidelity": 0.9988},
            {"seed": 1, "column": "auto", "truth": 0.8889, "fidelity": 0.9986},
            {"seed": 0, "column": "paper", "truth": 0.86, "fidelity": 0.9156},
            {"seed": 1, "column": "paper", "truth": 0.86, "fidelity": 0.9156},
        ],
    }
    text = "\n".join(make_real_results.fidelity_section(dbnet, fidelity))
    assert "vanilla mIoU 89.39 ± 0.01 against clean 88.89" in text
    assert "`auto` keeps 99.87% mIoU with the clean model's mask against vanilla's 98.40%" in text
    assert "(worst chip 99.86 against 98.30)" in text
    assert "(91.56% of the clean mask)" in text


def test_task_rows_gather_a_sweeps_rows_per_chip_as_the_page_stores_them():
    """A several-method, several-number sweep's rows become one row per chip: ``{test/metric: value}`` per column."""
    from types import SimpleNamespace

    chip = {"noise": "mul", "eta": 0.1, "seed": 0}
    rows = [
        {**chip, "vanilla": v, "nabn": n, "test": "test", "method": method, "metric": metric}
        for method, metric, v, n in (
            ("paper", "dbnet:miou", 0.87, 0.86),
            ("paper", "dbnet:pixel-acc", 0.98, 0.97),
            ("auto", "dbnet:miou", 0.87, 0.89),
            ("auto", "dbnet:pixel-acc", 0.98, 0.99),
        )
    ]
    gathered = make_real_results.task_rows(SimpleNamespace(rows=rows), ("paper", "auto"), ["dbnet"])
    assert gathered == [
        {
            **chip,
            "vanilla": {"dbnet/dbnet:miou": 0.87, "dbnet/dbnet:pixel-acc": 0.98},
            "paper": {"dbnet/dbnet:miou": 0.86, "dbnet/dbnet:pixel-acc": 0.97},
            "auto": {"dbnet/dbnet:miou": 0.89, "dbnet/dbnet:pixel-acc": 0.99},
        }
    ]
    # a one-number metric on several test sets: keyed by test set alone, as MobileNet-v2's rows are
    one = [{**chip, "vanilla": 0.5, "nabn": 0.9, "test": test, "method": "auto"} for test in ("agreement", "top1-20")]
    assert make_real_results.task_rows(SimpleNamespace(rows=one), ("auto",), ["agreement", "top1-20"]) == [
        {**chip, "vanilla": {"agreement": 0.5, "top1-20": 0.5}, "auto": {"agreement": 0.9, "top1-20": 0.9}}
    ]
    assert make_real_results.flat({"dbnet:miou": 0.5}, "dbnet") == {"dbnet/dbnet:miou": 0.5}
    assert make_real_results.flat(0.5, "agreement") == {"agreement": 0.5}
