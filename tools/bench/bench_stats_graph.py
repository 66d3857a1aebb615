"""What a statistics pass costs against inference, graph by graph, and where onnxruntime spends it.

Builds, from one model, the graphs a calibration runs and times them in one process over
the same batches, against the plain model:

* ``plain``: the model as given (what one inference pass costs);
* ``tap``: ``measure_inserted``'s graph: the clean model with each BatchNorm that ``split``
  inserted tapped by a dangling training-mode BatchNormalization (the statistics of the
  clean network, exact);
* ``train``: Algorithm 1's graph: every BatchNorm in training mode (``measure_clean`` and
  ``measure_noisy`` run it on the clean and the noisy weights);
* ``moments``: an alternative to ``tap`` measured here and *not* used by the library: per
  sample ``GlobalAveragePool(Y)`` and ``GlobalAveragePool(Y * Y)``, which onnxruntime runs in
  its blocked NCHWc layout, plus an identity depthwise Conv in front of each activation so
  that it still fuses into a Conv. Its variance is ``E[y^2] - E[y]^2`` from float32 sums,
  which cancels badly on channels whose mean is large against their spread; the tool prints
  how far its statistics are from ``tap``'s.

Times are the process's CPU seconds with onnxruntime on one thread (``--threads``), the
fastest of ``--repeat`` runs, so other load on a shared machine moves them less than wall
time would. ``--profile`` adds onnxruntime's per-operator profile of each graph (which
kernels the time goes to: layout conversions ``ReorderInput``/``ReorderOutput``, the
training-mode ``BatchNormalization``, unfused activations).

Usage::

    python -m tools.bench.bench_stats_graph MODEL DATA [--batch-size 64] [--samples 256]
        [--threads 1] [--repeat 3] [--profile] [--only plain,tap,train,moments]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import nabn_onnx as nb
from nabn_onnx.calibration.prepare import prepare_job
from nabn_onnx.calibration.statsgraph import ExposeBatchNormStatsPass

VARIANTS = ("plain", "tap", "train", "moments")
_FUSABLE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def build(kind: str, job) -> Tuple[onnx.ModelProto, Optional[List[str]], Dict[str, Tuple[str, str]]]:
    """``(model, outputs to fetch, {bn: (first, second) output names})`` of one variant."""
    model = _copy(job.clean)
    if kind == "plain":
        return model, None, {}
    if kind in ("tap", "train"):
        expose = ExposeBatchNormStatsPass(
            train=job.names if kind == "train" else (),
            tap=job.placeholders if kind == "tap" else (),
            keep_outputs=False,
            shapes=False,
        )
        outputs = expose(model).details["outputs"]
        pairs = {name: (stat.mean, stat.var) for name, stat in outputs.items()}
        return model, [n for pair in pairs.values() for n in pair], pairs
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    readers: Dict[str, list] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    pairs, nodes = {}, []
    for node in list(graph.node):
        nodes.append(node)
        if node.name not in job.placeholders:
            continue
        conv = producers.get(node.input[0])
        if conv is None or conv.op_type != "Conv" or conv.input[1] not in inits:
            continue
        spatial, y, base = len(inits[conv.input[1]].dims) - 2, node.output[0], node.name
        channels = int(inits[node.input[1]].dims[0])
        pairs[base] = (f"{base}/m1", f"{base}/m2")
        nodes += [
            helper.make_node("GlobalAveragePool", [y], [f"{base}/m1"]),
            helper.make_node("Mul", [y, y], [f"{base}/sq"]),
            helper.make_node("GlobalAveragePool", [f"{base}/sq"], [f"{base}/m2"]),
        ]
        acts = [r for r in readers[y] if r.op_type in _FUSABLE]
        if acts:
            w, b = f"{base}/idw", f"{base}/idb"
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.ones((channels, 1) + (1,) * spatial, np.float32), w),
                    numpy_helper.from_array(np.zeros(channels, np.float32), b),
                ]
            )
            nodes.append(
                helper.make_node("Conv", [y, w, b], [f"{base}/id"], group=channels, kernel_shape=[1] * spatial)
            )
            for act in acts:
                act.input[0] = f"{base}/id"
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    for first, second in pairs.values():
        graph.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in (first, second)])
    return model, [n for pair in pairs.values() for n in pair], pairs


def session(model: onnx.ModelProto, threads: int, profile: Optional[str] = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.enable_mem_pattern = False
    options.intra_op_num_threads = threads
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def batch_stats(kind: str, values: Dict[str, np.ndarray], pairs) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per BatchNorm, the batch's mean and biased variance as each variant gives them."""
    out = {}
    for name, (first, second) in pairs.items():
        a, b = values[first].astype(np.float64), values[second].astype(np.float64)
        if kind == "moments":
            c = a.shape[1]
            m, q = a.reshape(-1, c).mean(0), b.reshape(-1, c).mean(0)
            out[name] = (m, np.maximum(q - m * m, 0.0))
        else:
            out[name] = (a.reshape(-1), b.reshape(-1))
    return out


def op_profile(path: str) -> List[Tuple[str, float]]:
    with open(path) as fh:
        events = json.load(fh)
    total: Dict[str, float] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"].get("op_name", "?")] += event["dur"] / 1e6
    return sorted(total.items(), key=lambda kv: -kv[1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("data", help=".npz with the model's input (first key)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print onnxruntime's time per operator type")
    parser.add_argument("--only", help=f"comma-separated variants (default: {','.join(VARIANTS)})")
    args = parser.parse_args(argv)
    only = [v for v in (args.only.split(",") if args.only else VARIANTS) if v]
    unknown = set(only) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    only = ["plain"] + [v for v in only if v != "plain"]
    with np.load(args.data) as archive:
        key = next(k for k in archive.files if k != "labels")
        x = archive[key][: args.samples]
    job = prepare_job(args.model, None, nb.CalibrationConfig(noise=nb.make_noise("mul", 0.1)))
    name = job.clean.graph.input[0].name
    batches = [x[i : i + args.batch_size] for i in range(0, len(x), args.batch_size)]
    built = {kind: build(kind, job) for kind in only}
    sessions = {kind: session(model, args.threads) for kind, (model, _f, _p) in built.items()}
    times: Dict[str, float] = {}
    stats: Dict[str, Dict] = {}
    for _ in range(max(1, args.repeat)):
        for kind, sess in sessions.items():
            fetch, pairs = built[kind][1], built[kind][2]
            sess.run(fetch, {name: batches[0]})  # first run: arena and caches
            begun = time.process_time()
            for batch in batches:
                values = dict(zip(fetch or [], sess.run(fetch, {name: batch})))
            times[kind] = min(times.get(kind, float("inf")), time.process_time() - begun)
            if pairs:
                stats[kind] = batch_stats(kind, values, pairs)  # the last batch's
    print(
        f"{Path(args.model).name}: {len(x)} samples, batch {args.batch_size}, {args.threads} thread(s), "
        f"onnxruntime {ort.__version__}; {len(job.placeholders)} inserted BatchNorms, {len(job.names)} in all"
    )
    print(f"{'graph':10} {'CPU s':>8} {'x plain':>8}")
    for kind in only:
        print(f"{kind:10} {times[kind]:8.2f} {times[kind] / times['plain']:8.2f}")
    if "tap" in stats and "moments" in stats:
        common = [n for n in stats["moments"] if n in stats["tap"]]
        mean_err = max(
            float(np.max(np.abs(stats["moments"][n][0] - stats["tap"][n][0]) / np.sqrt(stats["tap"][n][1] + 1e-5)))
            for n in common
        )
        var_err = max(
            float(np.max(np.abs(stats["moments"][n][1] - stats["tap"][n][1]) / (stats["tap"][n][1] + 1e-5)))
            for n in common
        )
        print(
            f"moments against tap, last batch, {len(common)} BatchNorms: max |mean diff| / std {mean_err:.2e}, "
            f"max |var diff| / (var + 1e-5) {var_err:.2e}"
        )
    if args.profile:
        with tempfile.TemporaryDirectory() as folder:
            for kind, (model, fetch, _pairs) in built.items():
                sess = session(model, args.threads, profile=os.path.join(folder, kind))
                for batch in batches:
                    sess.run(fetch, {name: batch})
                ops = op_profile(sess.end_profiling())
                total = sum(seconds for _op, seconds in ops) or 1.0
                print(f"{kind}: onnxruntime kernel time by operator")
                for op, seconds in ops[:8]:
                    print(f"  {op:24} {seconds:7.3f}s {100 * seconds / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
