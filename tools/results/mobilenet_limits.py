"""What limits NaBN's agreement with the clean MobileNet-v2 under MUL noise? Experiments, one table.

Every row is one way of estimating the BatchNorm statistics of the same simulated chip
(MUL noise, seeds given), scored by **agreement with the clean model's top-1** on the 512
test crops of ``tools/samples/make_real_models.py`` (the measure of ``docs/generated/results_real.md``). The
model is the fused export with a BatchNorm inserted after every analog layer (what
``calibrate`` does to it); statistics are computed with the library's own pieces
(``nabn_onnx.calibration.collect_stats``: Algorithm 1 in train mode, or eval-mode taps; the
candidate formulas of ``auto``), so a row differs from ``calibrate`` only in the one thing it varies:

* ``calib N, batch B`` (``--rows base``: N = 256, the committed set; ``--rows more --more N``:
  the 256 plus N - 256 more crops of the same 18 calibration photos, seed ``CROP_SEED + 1``):
  statistics from N calibration crops, Algorithm 1 in batches of B (``--batches``). Methods
  ``paper`` (Algorithm 1), ``delta`` and ``blend`` (``auto``'s candidates; ``auto`` chooses
  one of them, or leaves the statistics as they are, per chip).
* ``oracle`` (``--rows oracle``): the same estimates measured on the **test crops
  themselves** through the noisy chip (clean reference statistics too): what no
  calibration set can beat, so the ceiling of BatchNorm recalibration on this chip.
* ``test photos, 256 other crops`` (``--rows indomain``): 256 fresh crops (seed
  ``CROP_SEED + 2``) of the 18 *test* photos, not the test crops: calibration data from the
  test distribution, to tell the photos' domain from the sample size.
* ``no classifier BN`` (``--rows nocls``): no BatchNorm inserted after the classifier
  (Gemm), so the 1000 logits' per-class statistics are not re-estimated.
* ``BatchNorm-kept export`` (``--rows bnkept``): ``calibrate`` itself (``paper`` and
  ``auto``) on ``mobilenet_v2_bn.onnx``, whose 52 BatchNorms hold the ImageNet running
  statistics, instead of the fused export.
* ``refine`` (``--refine``): ``paper``'s statistics written, then the BatchNorm inputs
  measured again in eval mode (as at test time) and written again, twice.

Every measurement is stored in ``<cache>/results_real.limits.json`` (key
``eta|seed|statistics|method``), so runs add rows; ``tools/results/make_real_results.py`` renders the
table into ``docs/generated/results_real.md``. Run (about 4 minutes per row, eta and chip on 2 busy
cores; Algorithm 1 batches of 256 need about 10 GB)::

    python -m tools.results.mobilenet_limits --rows oracle,base --etas 0.02,0.1 --seeds 0 [--batches 64,128]
    python -m tools.results.mobilenet_limits --table-only
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from nabn_onnx import DataSettings, InjectWeightNoisePass, calibrate, load_model, make_noise, split
from nabn_onnx.calibration import Reading, collect_stats
from tools.common import batchnorm_nodes, name_batchnorms, read_bn_stats, write_bn_stats
from tools.samples.make_real_models import (
    CALIB_SOURCES,
    CROP_SEED,
    DEFAULT_CACHE,
    TEST_SOURCES,
    crop,
    photo,
    preprocess,
)

#: ``{bn name: (mean, var)}``, as ``collect_stats`` measures them.
Stats = Dict[str, Tuple[np.ndarray, np.ndarray]]
CLASSIFIER = "/classifier/classifier.1/Gemm"


def extra_crops(cache: Path, count: int, seed: int = CROP_SEED + 1, sources=CALIB_SOURCES) -> np.ndarray:
    """``count`` more crops of ``sources`` (same recipe as ``draw_crops``, another seed)."""
    rng = np.random.default_rng(seed)
    photos = {s: photo(cache, s) for s in sources}
    out = np.empty((count, 3, 224, 224), dtype=np.float32)
    for i in range(count):
        scale = rng.uniform(0.15, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = min(1.0, math.sqrt(scale * aspect)), min(1.0, math.sqrt(scale / aspect))
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        row = {"box": [x, y, x + w, y + h], "flip": bool(rng.random() < 0.5)}
        out[i] = preprocess(crop(photos[sources[i % len(sources)]], row))
    return out


def agreement(model, test: Dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    # onnxruntime's defaults: all graph optimizations, as the library's sessions for serving
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, labels = test["input"], test["labels"]
    top1 = np.concatenate([session.run(None, {"input": x[i : i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])
    return float((top1 == labels).mean())


def names_of(model) -> List[str]:
    return [n.name for n in batchnorm_nodes(model)]


def train_stats(model, x: np.ndarray, batch: int) -> Stats:
    """Algorithm 1's measurement: every BatchNorm in train mode, batches of ``batch``."""
    reading = Reading(data=DataSettings(batch_size=batch))
    return collect_stats(model, {"input": x}, reading, train=names_of(model))[0]


def tap_stats(model, x: np.ndarray) -> Stats:
    """Every BatchNorm's input statistics with the model as written (eval mode), pooled over all samples."""
    return collect_stats(model, {"input": x}, Reading(data=DataSettings(batch_size=64)), tap=names_of(model))[0]


def written(model, stats: Dict[str, Dict[str, np.ndarray]]):
    return write_bn_stats(copy.deepcopy(model), stats)


def as_values(stats: Stats) -> Dict[str, Dict[str, np.ndarray]]:
    return {n: {"mean": m, "var": v} for n, (m, v) in stats.items()}


class Setup:
    """The fused model split on one data set: reference statistics and clean train-mode statistics per batch size."""

    def __init__(self, fused, x: np.ndarray, exclude: Optional[str] = None):
        self.x = x
        self.model = split(fused, {"input": x}, batch_size=64, exclude=exclude).model
        name_batchnorms(self.model)
        self.names = names_of(self.model)
        self.reference = read_bn_stats(self.model, self.names)
        self._clean: Dict[int, Stats] = {}

    def clean(self, batch: int) -> Stats:
        if batch not in self._clean:
            self._clean[batch] = train_stats(self.model, self.x, batch)
        return self._clean[batch]

    def rows(self, chip, batch: int, methods=("paper", "delta", "blend"), refine: int = 0):
        """``{method: calibrated noisy model}`` for this chip."""
        from nabn_onnx.calibration import new_stats  # auto's candidate formulas (the method registry)

        noisy = InjectWeightNoisePass(chip)(copy.deepcopy(self.model)).model
        measured = train_stats(noisy, self.x, batch)
        out = {}
        for method in methods:
            stats = new_stats(method, self.names, self.reference, measured, self.clean(batch))
            out[method] = written(noisy, stats)
        for _ in range(refine):
            out["refine"] = written(
                out.get("refine", out["paper"]), as_values(tap_stats(out.get("refine", out["paper"]), self.x))
            )
        return noisy, out


STORE = "results_real.limits.json"
ORDER = ("oracle", "test photos", "calib 256", "calib 512", "calib 768", "calib 1024")


def run(
    cache: Path,
    etas=(0.02, 0.1),
    seeds=(0,),
    rows=("oracle", "base"),
    batches=(64,),
    more: int = 512,
    refine: bool = False,
    save=None,
) -> Dict[str, float]:
    """Measure the rows; returns ``{"eta|seed|statistics|method": agreement}`` (``save`` called after each)."""
    started = time.perf_counter()
    fused = load_model(str(cache / "mobilenet_v2_fused.onnx"))
    with np.load(cache / "mobilenet_calib.npz") as f:
        calib = f["input"]
    with np.load(cache / "mobilenet_test.npz") as f:
        test = {"input": f["input"], "labels": f["labels"]}
    setups = {}
    if "base" in rows or "nocls" in rows:
        setups["256"] = Setup(fused, calib)
    if "more" in rows:
        x = np.concatenate([calib, extra_crops(cache, more - len(calib))])
        setups[str(more)] = Setup(fused, x)
    if "nocls" in rows:
        setups["256 nocls"] = Setup(fused, calib, exclude=CLASSIFIER)
    if "oracle" in rows:
        setups["oracle"] = Setup(fused, test["input"])
    if "indomain" in rows:
        setups["indomain"] = Setup(fused, extra_crops(cache, len(calib), CROP_SEED + 2, TEST_SOURCES))
    bn_kept = load_model(str(cache / "mobilenet_v2_bn.onnx")) if "bnkept" in rows else None
    print(f"setups ready in {time.perf_counter() - started:.0f} s", flush=True)
    methods = ("paper", "delta", "blend")
    plan = []  # (label, setup, batch, refine iterations)
    if "oracle" in rows:
        plan += [(f"oracle (test crops), batch {b}", "oracle", b, 2 if refine else 0) for b in batches]
    if "indomain" in rows:
        plan += [(f"test photos, 256 other crops, batch {b}", "indomain", b, 0) for b in batches]
    if "base" in rows:
        plan += [(f"calib 256, batch {b}", "256", b, 2 if refine else 0) for b in batches]
    if "nocls" in rows:
        plan += [(f"calib 256, batch {b}, no classifier BN", "256 nocls", b, 0) for b in batches]
    if "more" in rows:
        plan += [(f"calib {more}, batch {b}", str(more), b, 0) for b in batches]
    out: Dict[str, float] = {}
    for eta in etas:
        for seed in seeds:
            chip = make_noise("mul", eta, seed=seed)
            value = agreement(InjectWeightNoisePass(chip)(copy.deepcopy(fused)).model, test)
            out[f"{eta:g}|{seed}|none (vanilla)|"] = value
            print(f"MUL {eta:g} seed {seed}: vanilla {100 * value:.1f}", flush=True)
            if "bnkept" in rows:
                for method in ("paper", "auto"):
                    result = calibrate(bn_kept, {"input": calib}, noise=chip, method=method, batch_size=64)
                    value = agreement(result.model, test)
                    name = method + (f" (chose {result.report.chosen})" if method == "auto" else "")
                    out[f"{eta:g}|{seed}|calib 256, batch 64, BatchNorm-kept export (calibrate)|{name}"] = value
                    print(f"MUL {eta:g} seed {seed}: BN-kept | {name}: {100 * value:.1f}", flush=True)
                    if save:
                        save(out)
            for label, key, batch, iterations in plan:
                _, models = setups[key].rows(chip, batch, methods, iterations)
                for method, model in models.items():
                    value = agreement(model, test)
                    out[f"{eta:g}|{seed}|{label}|{method}"] = value
                    print(
                        f"MUL {eta:g} seed {seed}: {label} | {method}: {100 * value:.1f}"
                        f" ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    if save:
                        save(out)
    return out


def table(measured: Dict[str, float]) -> List[str]:
    """Markdown: one row per (statistics, method), one column per eta, mean over chips and each chip."""
    parsed = [
        (float(e), int(s), label, method, v) for k, v in measured.items() for e, s, label, method in [k.split("|")]
    ]
    etas = sorted({p[0] for p in parsed})

    def rank(label: str):
        head = next((i for i, o in enumerate(ORDER) if label.startswith(o)), len(ORDER))
        natural = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]  # batch 64 before 128
        return (label != "none (vanilla)", head, natural)

    keys = sorted({(p[2], p[3]) for p in parsed}, key=lambda k: (rank(k[0]), k[1]))
    lines = [
        "| statistics | method | " + " | ".join(f"MUL {e:g}: mean (chips)" for e in etas) + " |",
        "|---|---|" + "---:|" * len(etas),
    ]
    for label, method in keys:
        cells = []
        for e in etas:
            got = sorted((p[1], p[4]) for p in parsed if p[0] == e and p[2] == label and p[3] == method)
            values = [v for _, v in got]
            cells.append(
                f"{100 * np.mean(values):.1f} ({' / '.join(f'{s}: {100 * v:.1f}' for s, v in got)})" if got else ""
            )
        lines.append(f"| {label} | {method} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--etas", default="0.02,0.1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--rows", default="oracle,base", help="comma-separated: base, more, oracle, indomain, nocls, bnkept"
    )
    parser.add_argument("--more", type=int, default=512, help="calibration crops of the 'more' rows")
    parser.add_argument("--refine", action="store_true", help="add the eval-mode 'refine' rows")
    parser.add_argument("--batches", default="64", help="Algorithm 1 batch sizes (memory grows with it)")
    parser.add_argument("--table-only", action="store_true", help=f"only print the table of <cache>/{STORE}")
    args = parser.parse_args(argv)
    store = args.cache / STORE
    measured = json.loads(store.read_text()) if store.exists() else {}
    if not args.table_only:

        def save(new: Dict[str, float]) -> None:
            measured.update(new)
            store.write_text(json.dumps(measured, indent=1, sort_keys=True))

        run(
            args.cache,
            [float(e) for e in args.etas.split(",")],
            [int(s) for s in args.seeds.split(",")],
            args.rows.split(","),
            [int(b) for b in args.batches.split(",")],
            args.more,
            args.refine,
            save,
        )
    print("agreement with clean top-1 (%) on the 512 test crops, MobileNet-v2 fused, MUL noise")
    print("\n".join(table(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
