"""Static against dynamic calibration when the chip's noise drifts away from the calibration eta.

In the spirit of the paper's Figure 3 (Section V-C). The model is calibrated once, on the
calibration data, for a chip at ``eta_cal``. The chip is then served the test set while its
noise scale is something else, with the temporal fluctuation re-drawn per batch
(:class:`nabn_onnx.TemporalNoise`). Four ways to serve it, all seeing the same noise stream:

* **vanilla**: original BatchNorm statistics;
* **static**: the statistics calibrated at ``eta_cal``, fixed;
* **dynamic**: starts from the static statistics and keeps updating them from every served
  test batch (:class:`nabn_onnx.NabnSession`, EMA with ``--momentum``);
* **oracle**: statistics calibrated at the test eta itself (what static would need).

Panel (a): accuracy over the whole served stream (``--passes`` passes over the test set,
the adaptation period included) against the test eta, mean over ``--chips`` chips.
Panel (b): a drifting chip whose eta ramps from ``eta_cal`` to ``--drift-to`` over the
stream; accuracy of each served batch (running mean over 5 batches), static vs dynamic.

Run from the repository root (about a minute on two cores)::

    python -m tools.results.drift_experiment

Writes ``docs/generated/drift.png`` and ``docs/generated/drift.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from nabn_onnx import NabnSession, TemporalNoise, calibrate, make_noise, split
from tools.common import atomic_write_text, batchnorm_nodes, name_batchnorms, read_bn_stats, write_bn_stats

ROOT = Path(__file__).resolve().parents[2]
SMOOTH = 5


def calibrated_statistics(clean, calib: str, noise):
    """``clean`` (weights untouched) with the BatchNorm statistics calibrated for the chip ``noise``.

    :func:`calibrate` returns the chip's noisy weights too; the served chip adds its own
    noise per batch to the weights it is given, so it must be given the clean ones.
    """
    calibrated = calibrate(clean, calib, noise=noise, method="paper").model
    model = copy.deepcopy(clean)
    return write_bn_stats(model, read_bn_stats(calibrated, [node.name for node in batchnorm_nodes(model)]))


def batches(test: str, batch_size: int) -> Iterator[Tuple[Dict[str, np.ndarray], np.ndarray]]:
    """``(feeds, labels)`` of consecutive batches of an ``.npz`` (every array but ``labels`` is an input)."""
    with np.load(test) as archive:
        arrays = {key: archive[key] for key in archive.files}
    labels = arrays.pop("labels")
    for start in range(0, len(labels), batch_size):
        yield {k: v[start : start + batch_size] for k, v in arrays.items()}, labels[start : start + batch_size]


def serve(
    model,
    test: str,
    noise,
    momentum: float,
    update: bool,
    passes: int,
    batch_size: int,
    schedule: Optional[Callable[[int], float]] = None,
) -> List[float]:
    """Accuracy of every served batch."""
    session = NabnSession(model, momentum=momentum, update=update, noise=TemporalNoise(noise, schedule))
    out = []
    for _ in range(passes):
        for feeds, labels in batches(test, batch_size):
            (logits,) = session.run(None, feeds)
            out.append(float(np.mean(logits.argmax(1) == labels)))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "sample_models/resnet_fused.onnx"))
    parser.add_argument("--calib", default=str(ROOT / "sample_models/digits_calib.npz"))
    parser.add_argument("--test", default=str(ROOT / "sample_models/digits_test.npz"))
    parser.add_argument("--noise", choices=["mul", "add"], default="mul")
    parser.add_argument("--eta-cal", type=float, default=0.1, help="eta the model is calibrated for")
    parser.add_argument("--etas", default="0,0.05,0.1,0.2,0.3,0.5", help="test etas")
    parser.add_argument("--drift-to", type=float, default=0.5, help="panel (b): eta at the end of the stream")
    parser.add_argument("--chips", type=int, default=2)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--passes", type=int, default=2, help="passes over the test set per chip")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "docs" / "generated"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    etas = [float(e) for e in args.etas.split(",")]
    out = Path(args.out)
    out.mkdir(exist_ok=True)

    clean = split(args.model, args.calib).model  # fused BatchNorms back out, with clean statistics
    name_batchnorms(clean)
    results: Dict[str, Dict[float, List[float]]] = {
        k: {e: [] for e in etas} for k in ("vanilla", "static", "dynamic", "oracle")
    }
    drift: Dict[str, List[List[float]]] = {"static": [], "dynamic": []}
    for seed in range(args.chips):
        static = calibrated_statistics(clean, args.calib, make_noise(args.noise, args.eta_cal, seed=seed))
        for eta in etas:
            noise = make_noise(args.noise, eta, seed=seed)
            oracle = calibrated_statistics(clean, args.calib, noise)
            common = dict(
                test=args.test, noise=noise, momentum=args.momentum, passes=args.passes, batch_size=args.batch_size
            )
            for name, model, update in (
                ("vanilla", clean, False),
                ("static", static, False),
                ("dynamic", static, True),
                ("oracle", oracle, False),
            ):
                results[name][eta].append(float(np.mean(serve(model, update=update, **common))))
        stream = len(list(batches(args.test, args.batch_size))) * args.passes
        ramp = lambda i, stream=stream: args.eta_cal + (args.drift_to - args.eta_cal) * i / max(stream - 1, 1)
        noise = make_noise(args.noise, args.eta_cal, seed=seed)
        for name, update in (("static", False), ("dynamic", True)):
            drift[name].append(
                serve(static, args.test, noise, args.momentum, update, args.passes, args.batch_size, schedule=ramp)
            )

    means = {k: [100 * np.mean(v[e]) for e in etas] for k, v in results.items()}
    lines = [
        "# Static vs dynamic calibration under drifting noise",
        "",
        (
            f"Model `{Path(args.model).name}`, {args.noise.upper()} noise, calibrated at η={args.eta_cal:g}; "
            f"test-set accuracy (%) over {args.passes} served pass(es) with batch {args.batch_size} "
            f"(temporal noise re-drawn per batch, adaptation included), mean of {args.chips} chip(s); dynamic "
            f"calibration updates the statistics after every served batch with momentum {args.momentum}."
        ),
        "",
        "| test η | " + " | ".join(f"{e:g}" for e in etas) + " |",
        "|---|" + "---:|" * len(etas),
    ]
    labels = {
        "vanilla": "vanilla",
        "static": f"static (cal. η={args.eta_cal:g})",
        "dynamic": "dynamic",
        "oracle": "oracle (cal. at test η)",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in means[key]) + " |")
    drift_means = {k: 100 * np.mean(v) for k, v in drift.items()}
    tail = {k: 100 * np.mean(np.asarray(v)[:, -len(v[0]) // 4 :]) for k, v in drift.items()}
    lines += [
        "",
        (
            f"Drifting chip (η ramps {args.eta_cal:g} → {args.drift_to:g} over the stream): static "
            f"{drift_means['static']:.2f}%, dynamic {drift_means['dynamic']:.2f}% over the whole stream; "
            f"last quarter static {tail['static']:.2f}%, dynamic {tail['dynamic']:.2f}%."
        ),
        "",
    ]
    table = "\n".join(lines)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {
        "vanilla": ("tab:green", "o-"),
        "static": ("tab:orange", "s-"),
        "dynamic": ("tab:blue", "^-"),
        "oracle": ("gray", "--"),
    }
    for key, label in labels.items():
        color, style = styles[key]
        left.plot(etas, means[key], style, color=color, label=label)
    left.axvline(args.eta_cal, color="black", linewidth=0.8, linestyle=":")
    left.set_xlabel(f"test noise scale η ({args.noise.upper()})")
    left.set_ylabel("accuracy (%)")
    left.set_title("(a) noise scale away from the calibration η")
    left.set_ylim(0, 102)
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    kernel = np.ones(SMOOTH) / SMOOTH
    for key in ("static", "dynamic"):
        curve = 100 * np.mean(drift[key], axis=0)
        color, _ = styles[key]
        right.plot(np.convolve(curve, kernel, mode="valid"), color=color, label=labels[key])
    right.set_xlabel(f"served batch (η ramps {args.eta_cal:g} → {args.drift_to:g})")
    right.set_ylabel(f"batch accuracy (%), running mean of {SMOOTH}")
    right.set_title("(b) a drifting chip")
    right.set_ylim(0, 102)
    right.grid(alpha=0.3)
    right.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out / "drift.png", dpi=120, bbox_inches="tight")  # as nabn_onnx's plots
    plt.close(figure)
    atomic_write_text(out / "drift.md", table + "\n![static vs dynamic calibration](drift.png)\n")
    print(table)
    print(f"wrote {out / 'drift.png'} and {out / 'drift.md'} in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
