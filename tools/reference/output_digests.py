"""SHA-256 digests of the outputs of every main nabn-onnx command, to prove a refactor changed none.

Runs ``split`` (without and with data), ``inject`` (MUL and ADD, several seeds and etas),
``calibrate`` (``auto``, ``paper``, ``delta`` on fused and BatchNorm-kept models; chip mode, where
the model already is the noisy chip, with and without ``reference=``), ``evaluate``, ``sweep`` and
``check``, plus a few of the same through the CLI (``nabn_onnx.cli.main``), and hashes what they
produce. Only the public API is used: the top-level ``nabn_onnx`` names and the CLI, which survive
a re-layout of the package's modules.

What is hashed, per case (the digest names are ``<case>:<what>``):

* ``file``: the bytes of the model as written by the library (``output=`` / ``-o``);
* ``graph``: the returned ``ModelProto`` serialized deterministically, with the provenance key
  ``nabn.version`` blanked (so it survives a version bump that ``file`` would flag);
* ``report`` / ``value``: a canonical JSON (sorted keys, exact float repr) of the report or the
  metric, with the run-dependent keys removed (wall times ``seconds``, ``version``, ``executor``,
  worker/host names) and the temporary and input folders replaced by placeholders.

onnxruntime's results can depend on its thread count, so every session is pinned to
``--threads`` threads (default 1) through ``NABN_INTRA_OP_THREADS``, the library's own setting.

Run from the repository root, with the checkout to check first on the path (``PYTHONPATH=.`` when
nabn-onnx is installed from another checkout; the tool prints which package it ran)::

    python -m tools.reference.output_digests --out before.json         # the bundled samples
    python -m tools.reference.output_digests --compare before.json     # same/DIFFERENT, exit 1 on any
    python -m tools.reference.output_digests --real /work/real-cache --out real.json

``--real DIR`` runs a small set per real network (MobileNet-v2, DBNet, PicoDet) from the cache of
``tools/make_real_models.py``. ``tests/test_frozen_outputs.py`` checks the samples' digests against
``tests/data/output_digests_samples.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx

import nabn_onnx
import nabn_onnx.cli

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "sample_models"
THREADS_ENV = "NABN_INTRA_OP_THREADS"

#: report keys whose values depend on the run (time, machine, version), not on the computation
VOLATILE = frozenset(
    {
        "seconds",
        "steps",
        "time",
        "times",
        "elapsed",
        "version",
        "executor",
        "worker",
        "workers",
        "host",
        "hostname",
        "pid",
    }
)

Digests = Dict[str, str]


# ------------------------------------------------------------------------------------ hashing


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _plain(value: Any, replace: Dict[str, str]) -> Any:
    """``value`` as plain JSON data: volatile keys dropped, folders replaced, numpy made Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v, replace) for k, v in value.items() if str(k) not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_plain(v, replace) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), replace)
    if isinstance(value, np.generic):
        return _plain(value.item(), replace)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        for folder, placeholder in replace.items():
            value = value.replace(folder, placeholder)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # NaN/inf: JSON has no literal for them
    return value


def canonical_json(value: Any, replace: Optional[Dict[str, str]] = None) -> str:
    """Sorted-key JSON of :func:`_plain` ``value``; floats as Python's exact shortest repr."""
    return json.dumps(_plain(value, replace or {}), sort_keys=True, separators=(",", ":"), allow_nan=False)


def graph_digest(model: onnx.ModelProto) -> str:
    """Digest of ``model`` serialized deterministically, with the ``nabn.version`` provenance blanked."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for prop in copy.metadata_props:
        if prop.key == "nabn.version":
            prop.value = ""
    return sha256(copy.SerializeToString(deterministic=True))


# -------------------------------------------------------------------------------------- runner


class Run:
    """Collects the digests of one run; each case is run once, its time noted."""

    def __init__(self, tmp: Path, inputs: Path, verbose: bool = True):
        self.tmp = tmp
        self.inputs = inputs
        self.verbose = verbose
        self.digests: Digests = {}
        self.payloads: Dict[str, str] = {}
        self.replace = {str(tmp): "<tmp>", str(inputs): "<inputs>"}
        self._count = 0

    def out(self, name: str) -> Path:
        """A fresh file name in the temporary folder."""
        self._count += 1
        return self.tmp / f"{self._count:03d}_{name.replace('/', '_').replace(':', '_')}"

    def add(self, key: str, digest: str, payload: Optional[str] = None) -> None:
        if key in self.digests:
            raise ValueError(f"case {key!r} twice")
        self.digests[key] = digest
        if payload is not None:
            self.payloads[key] = payload

    def json(self, key: str, value: Any) -> None:
        text = canonical_json(value, self.replace)
        self.add(key, sha256(text.encode()), text)

    def model(self, key: str, model: onnx.ModelProto, path: Optional[Path] = None) -> None:
        """``key:graph`` of the proto, and ``key:file`` of the bytes written (saved here when no ``path``)."""
        if path is None:
            path = self.out(key).with_suffix(".onnx")
            nabn_onnx.save_model(model, path)
        self.add(f"{key}:file", sha256(path.read_bytes()))
        self.add(f"{key}:graph", graph_digest(model))

    def case(self, name: str, body: Callable[[], None]) -> None:
        started = time.perf_counter()
        body()
        if self.verbose:
            print(f"  {time.perf_counter() - started:7.2f} s  {name}", file=sys.stderr, flush=True)


def cli(args: List[str], ok: Tuple[int, ...] = (0,)) -> int:
    """``nabn-onnx ARGS`` in this process, its output swallowed; the exit code (one not in ``ok`` raises)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = nabn_onnx.cli.main(args)
        except SystemExit as exit:  # argparse and friends
            code = exit.code if isinstance(exit.code, int) else 1
    code = int(code or 0)
    if code not in ok:
        raise RuntimeError(f"nabn-onnx {' '.join(args)} exited {code}: {err.getvalue().strip()[-500:]}")
    return code


# --------------------------------------------------------------------------------------- cases


class Spec:
    """One network and its data, and how small a run of it is.

    ``fused`` is the main model (``kind`` says whether its BatchNorms are ``"fused"`` or kept,
    ``"bn"``), ``bn`` the same network with its BatchNorms kept, if there is one.
    """

    def __init__(
        self,
        name: str,
        fused: str,
        bn: Optional[str],
        calib: str,
        test: str,
        metric: str,
        batch: int,
        batches: int,
        kind: str = "fused",
    ):
        self.name, self.fused, self.bn, self.calib, self.test = name, fused, bn, calib, test
        self.metric, self.batch, self.batches, self.kind = metric, batch, batches, kind


def run_model_cases(run: Run, spec: Spec, folder: Path, full: bool) -> None:
    """The API cases of one network: split, inject, calibrate, evaluate, sweep, check.

    ``full`` adds the second seeds/etas, ADD noise, chip mode and ``check`` (the samples run all).
    """
    calib, test = str(folder / spec.calib), str(folder / spec.test)
    few = dict(batch_size=spec.batch, max_batches=spec.batches, show_progress=False)
    models = [(spec.kind, str(folder / spec.fused))] + ([("bn", str(folder / spec.bn))] if spec.bn else [])
    mul = nabn_onnx.make_noise("mul", 0.2, seed=1)

    for kind, path in models:
        base = f"{spec.name}_{kind}"

        def split_cases(path=path, base=base):
            key = f"split/{base}/nodata"
            out = run.out(key).with_suffix(".onnx")
            try:
                result = nabn_onnx.split(path, output=out)
            except nabn_onnx.NothingToDoError as error:  # a BN-kept model has nothing to split
                run.json(f"{key}:error", {"error": type(error).__name__, "message": str(error)})
            else:
                run.model(key, result.model, out)
                run.json(f"{key}:details", {"modified": result.modified, "details": result.details})
            key = f"split/{base}/data"
            out = run.out(key).with_suffix(".onnx")
            try:
                result = nabn_onnx.split(path, calib, output=out, **few)
            except nabn_onnx.NothingToDoError as error:
                run.json(f"{key}:error", {"error": type(error).__name__, "message": str(error)})
            else:
                run.model(key, result.model, out)

        run.case(f"split {base}", split_cases)

        injections = [("mul", 0.2, 1)]
        if full:
            injections += [("mul", 0.5, 7), ("add", 0.05, 3)]
        for noise, eta, seed in injections:

            def inject_case(path=path, base=base, noise=noise, eta=eta, seed=seed):
                key = f"inject/{base}/{noise}-eta{eta:g}-seed{seed}"
                out = run.out(key).with_suffix(".onnx")
                result = nabn_onnx.inject(path, nabn_onnx.make_noise(noise, eta, seed=seed), output=out)
                run.model(key, result.model, out)

            run.case(f"inject {base} {noise} {eta:g} {seed}", inject_case)

        for method in ("auto", "paper", "delta"):

            def calibrate_case(path=path, base=base, method=method):
                key = f"calibrate/{base}/{method}-mul-eta0.2-seed1"
                out = run.out(key).with_suffix(".onnx")
                result = nabn_onnx.calibrate(path, calib, method=method, noise=mul, output=out, **few)
                run.model(key, result.model, out)
                run.json(f"{key}:report", result.report.to_dict())
                value = nabn_onnx.evaluate(result.model, test, spec.metric, **few)
                run.json(f"{key}:{spec.metric}", value)

            run.case(f"calibrate {base} {method}", calibrate_case)

        # chip mode: the model given is already the noisy chip
        def chip_cases(path=path, base=base):
            chip = nabn_onnx.inject(path, nabn_onnx.make_noise("mul", 0.3, seed=5)).model
            runs = (("paper", None), ("auto", None), ("auto", path), ("delta", path)) if full else (("auto", path),)
            for method, reference in runs:
                key = f"calibrate-chip/{base}/{method}-{'reference' if reference else 'alone'}"
                try:
                    result = nabn_onnx.calibrate(chip, calib, method=method, reference=reference, **few)
                except nabn_onnx.NabnError as error:
                    run.json(f"{key}:error", {"error": type(error).__name__, "message": str(error)})
                    continue
                run.model(key, result.model)
                run.json(f"{key}:report", result.report.to_dict())

        run.case(f"calibrate chip {base}", chip_cases)

        def evaluate_case(path=path, base=base):
            run.json(f"evaluate/{base}/{spec.metric}", nabn_onnx.evaluate(path, test, spec.metric, **few))

        run.case(f"evaluate {base}", evaluate_case)

    fused = str(folder / spec.fused)
    sweep_few = dict(batch_size=spec.batch, calib_batches=spec.batches, test_batches=spec.batches)

    def sweep_case():
        etas, seeds = ([0.1, 0.4], 2) if full else ([0.2], 1)
        report = nabn_onnx.sweep(fused, calib, test, etas=etas, seeds=seeds, metric=spec.metric, **sweep_few)
        run.json(f"sweep/{spec.name}_{spec.kind}/mul-auto:report", report.to_dict())
        if full and spec.bn:
            report = nabn_onnx.sweep(
                str(folder / spec.bn), calib, test, noise="add", etas=[0.05], seeds=[3], method="paper", **sweep_few
            )
            run.json(f"sweep/{spec.name}_bn/add-paper:report", report.to_dict())

    run.case(f"sweep {spec.name}", sweep_case)

    def check_case():
        seeds = 2 if full else 1
        for calibrated in (False, True) if full else (True,):
            key = f"check/{spec.name}_{spec.kind}/{'calibrated' if calibrated else 'vanilla'}"
            threshold = nabn_onnx.evaluate(fused, test, spec.metric, **few) * 0.9
            report = nabn_onnx.check(
                fused,
                calib,
                test,
                [f"{spec.metric}>={threshold:.4f}"],
                calibrated=calibrated,
                etas=[0.3],
                seeds=seeds,
                **sweep_few,
            )
            run.json(f"{key}:verdict", report.passed)
            run.json(f"{key}:report", report.to_dict())

    run.case(f"check {spec.name}", check_case)


def run_cli_cases(run: Run, spec: Spec, folder: Path) -> None:
    """A few of the same through ``nabn-onnx`` (argument parsing, ``-o``, ``--report``)."""
    calib, test, fused = str(folder / spec.calib), str(folder / spec.test), str(folder / spec.fused)
    size = ["--batch-size", str(spec.batch), "--max-batches", str(spec.batches)]

    def calibrate_cli():
        key = f"cli/calibrate/{spec.name}_fused/auto-add-eta0.05-seed2"
        out, report = run.out(key).with_suffix(".onnx"), run.out(key).with_suffix(".json")
        noise = ["--noise", "add", "--eta", "0.05", "--seed", "2"]
        code = cli(["calibrate", fused, "--data", calib, *noise, *size, "-o", str(out), "--report", str(report), "-q"])
        run.json(f"{key}:exit", code)
        run.add(f"{key}:file", sha256(out.read_bytes()))
        run.json(f"{key}:report", json.loads(report.read_text()))

    run.case("cli calibrate", calibrate_cli)

    def sweep_cli():
        key = f"cli/sweep/{spec.name}_fused/mul-eta0.1,0.3-seeds2"
        report = run.out(key).with_suffix(".json")
        args = ["sweep", fused, "--calib", calib, "--test", test, "--noise", "mul", "--eta", "0.1,0.3", "--seeds", "2"]
        run.json(f"{key}:exit", cli(args + size + ["--report", str(report), "-q"]))
        run.json(f"{key}:report", json.loads(report.read_text()))

    run.case("cli sweep", sweep_cli)

    def check_cli():
        for bound in ("0.5", "0.999"):  # one gate passed, one failed
            key = f"cli/check/{spec.name}_fused/calibrated-min-top1={bound}"
            report = run.out(key).with_suffix(".json")
            args = ["check", fused, "--data", calib, "--test", test, "--min", f"top1={bound}", "--calibrated"]
            args += ["--noise", "mul", "--eta", "0.3", "--seeds", "2", *size, "--report", str(report), "-q"]
            run.json(f"{key}:exit", cli(args, ok=(0, 1)))
            run.json(f"{key}:report", json.loads(report.read_text()))

    run.case("cli check", check_cli)


SAMPLE_SPECS = [
    Spec("resnet", "resnet_fused.onnx", "resnet_bn.onnx", "digits_calib.npz", "digits_test.npz", "top1", 64, 2),
    Spec(
        "mobilenet", "mobilenet_fused.onnx", "mobilenet_bn.onnx", "digits_calib.npz", "digits_test.npz", "top1", 64, 2
    ),
]

REAL_SPECS = [
    Spec(
        "mobilenet_v2",
        "mobilenet_v2_fused.onnx",
        "mobilenet_v2_bn.onnx",
        "mobilenet_calib.npz",
        "mobilenet_test.npz",
        "top1",
        16,
        2,
    ),
    # batches of 8 and 4: auto needs 4 samples of a batch to hold out
    Spec("dbnet", "dbnet.onnx", None, "dbnet_calib.npz", "dbnet_test.npz", "dbnet:miou", 8, 2),
    Spec("picodet", "layout_cdla.onnx", None, "layout_calib.npz", "layout_test.npz", "picodet:map50", 4, 2, kind="bn"),
]


def sample_digests(verbose: bool = False, threads: int = 1) -> Digests:
    """The digests of the bundled samples (what ``tests/data/output_digests_samples.json`` records)."""
    return compute(SAMPLES, SAMPLE_SPECS, full=True, with_cli=True, verbose=verbose, threads=threads)[0]


def real_digests(cache: Path, verbose: bool = True, threads: int = 1) -> Digests:
    """The digests of the real networks in ``cache`` (``tools/make_real_models.py``)."""
    return compute(Path(cache), REAL_SPECS, full=False, with_cli=False, verbose=verbose, threads=threads)[0]


def compute(
    folder: Path, specs: List[Spec], *, full: bool, with_cli: bool, verbose: bool, threads: int
) -> Tuple[Digests, Dict[str, str]]:
    """Run every case of ``specs`` on the files in ``folder``: (digests, canonical JSON of the JSON cases)."""
    missing = [
        name
        for spec in specs
        for name in (spec.fused, spec.bn, spec.calib, spec.test)
        if name and not (folder / name).exists()
    ]
    if missing:
        raise FileNotFoundError(f"not in {folder}: {', '.join(missing)}")
    previous = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="nabn-digests-") as tmp:
            run = Run(Path(tmp).resolve(), folder.resolve(), verbose=verbose)
            run.replace[str(folder)] = "<inputs>"
            for spec in specs:
                run_model_cases(run, spec, folder, full)
            if with_cli:
                run_cli_cases(run, specs[0], folder)
    finally:
        if previous is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = previous
    return dict(sorted(run.digests.items())), run.payloads


def compare(now: Digests, recorded: Digests) -> List[str]:
    """One line per case, ``same``/``DIFFERENT``/``missing``/``new``; the cases that differ."""
    differ = []
    for key in sorted(set(now) | set(recorded)):
        if key not in now:
            status = "MISSING (recorded, not computed)"
        elif key not in recorded:
            status = "NEW (computed, not recorded)"
        elif now[key] == recorded[key]:
            status = "same"
        else:
            status = "DIFFERENT"
        if status != "same":
            differ.append(key)
        print(f"{status:10s} {key}")
    return differ


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--samples", action="store_true", help="the bundled sample_models/ (default)")
    which.add_argument(
        "--real", type=Path, metavar="DIR", help="the real networks in this tools/make_real_models.py cache"
    )
    parser.add_argument("--out", type=Path, metavar="FILE.json", help="write the digests here")
    parser.add_argument(
        "--compare", type=Path, metavar="FILE.json", help="compare with recorded digests; exit 1 on any difference"
    )
    parser.add_argument(
        "--payloads",
        type=Path,
        metavar="FILE.json",
        help="also write the canonical JSON behind each JSON digest (to see what changed)",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-case timings")
    args = parser.parse_args(argv)

    print(f"nabn_onnx {nabn_onnx.__version__} from {Path(nabn_onnx.__file__).parent}", file=sys.stderr)
    started = time.perf_counter()
    if args.real is not None:
        digests, payloads = compute(
            args.real, REAL_SPECS, full=False, with_cli=False, verbose=not args.quiet, threads=args.threads
        )
    else:
        digests, payloads = compute(
            SAMPLES, SAMPLE_SPECS, full=True, with_cli=True, verbose=not args.quiet, threads=args.threads
        )
    print(f"{len(digests)} digests in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    if args.payloads:
        args.payloads.write_text(json.dumps(payloads, indent=1, sort_keys=True) + "\n")
    if args.compare:
        differ = compare(digests, json.loads(args.compare.read_text()))
        print(f"{len(differ)} of {len(digests)} cases differ" if differ else f"all {len(digests)} cases the same")
        return 1 if differ else 0
    if not args.out:
        print(json.dumps(digests, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
