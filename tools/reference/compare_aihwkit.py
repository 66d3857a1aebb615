"""Compare nabn-onnx's device models with aihwkit's own noise-model code, draw for draw statistics.

    python -m tools.reference.compare_aihwkit [--aihwkit SRC] [--per-level 200000] [--seed 0]

aihwkit's noise models (``aihwkit/inference/noise/``, ``compensation/``, ``converter/``) are
plain PyTorch. ``import aihwkit.inference`` also imports the compiled simulator, so this
script loads those modules straight from aihwkit's source (an installed aihwkit, or the
sdist that ``pip download aihwkit==1.2.0 --no-deps`` fetches; ``--aihwkit`` names a folder
or ``.tar.gz``), registering empty parent packages so no ``__init__`` pulls the simulator in.
Needs torch (``pip install torch``), which nabn-onnx itself never does.

For each model and each target conductance it draws ``--per-level`` devices with our numpy
code and as many with aihwkit's torch code, and compares mean, standard deviation and the
1st, 50th and 99th percentiles of

* programmed conductances (``apply_programming_noise_to_conductance``),
* drifted conductances at 1 h, 1 day and 1 year (``generate_drift_coefficients`` then
  ``apply_drift_noise_to_conductance``; RRAM: the times aihwkit accepts),
* whole weight tensors through the inference-tile flow (``apply_programming_noise`` then
  ``apply_drift_noise``, plus ``GlobalDriftCompensation``), binned by target weight.

Tolerances are 6 standard errors of the difference of two independent estimates: for the
mean ``6 sqrt(2) s / sqrt(n)``; for the std ``6 sqrt(2) s / sqrt(2 n)`` (plus the
kurtosis term); for a percentile ``6 sqrt(2) sqrt(p (1 - p) / n) / f(q)`` with the density
``f`` at the quantile estimated from the pooled samples. Exit code 1 if any statistic is
outside its tolerance.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from nabn_onnx import PCMNoise, RRAMCMONoise, RRAMNoise

PERCENTILES = (1.0, 50.0, 99.0)
SE = 6.0  # standard errors allowed


# --------------------------------------------------------------------------- loading aihwkit


def _source_root(given: str | None) -> Path:
    """Folder holding the ``aihwkit`` package source."""
    if given is None:
        spec = importlib.util.find_spec("aihwkit")
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations))).parent
        cache = Path(tempfile.gettempdir()) / "nabn-aihwkit"
        archives = sorted(cache.glob("aihwkit-*.tar.gz"))
        if not archives:
            cache.mkdir(exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "aihwkit==1.2.0",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    str(cache),
                ],
                check=True,
            )
            archives = sorted(cache.glob("aihwkit-*.tar.gz"))
        given = str(archives[-1])
    path = Path(given)
    if path.suffix == ".gz":
        out = path.with_suffix("").with_suffix("")
        if not out.exists():
            with tarfile.open(path) as tar:
                tar.extractall(out.parent, filter="data")
        path = out
    for candidate in (path / "src", path):
        if (candidate / "aihwkit" / "inference" / "noise" / "pcm.py").exists():
            return candidate
    raise SystemExit(f"no aihwkit source under {path}")


def load_aihwkit(given: str | None):
    """aihwkit's inference noise modules, without its compiled simulator."""
    root = _source_root(given)
    for name in (
        "aihwkit",
        "aihwkit.inference",
        "aihwkit.inference.noise",
        "aihwkit.inference.converter",
        "aihwkit.inference.compensation",
    ):
        package = types.ModuleType(name)
        package.__path__ = [str(root / Path(*name.split(".")))]
        sys.modules[name] = package
    import importlib

    modules = {
        name: importlib.import_module(f"aihwkit.inference.{name}")
        for name in ("noise.pcm", "noise.reram", "compensation.drift", "converter.conductance")
    }
    version = (root / "aihwkit" / "VERSION.txt").read_text().strip()
    return modules, version, root


# --------------------------------------------------------------------------- statistics


def _tolerances(ours: np.ndarray, theirs: np.ndarray):
    n = min(ours.size, theirs.size)
    both = np.concatenate([ours, theirs])
    s = both.std()
    centered = both - both.mean()
    kurt = float((centered**4).mean() / max(s**4, 1e-300))
    tol = {
        "mean": SE * math.sqrt(2) * s / math.sqrt(n) + 1e-12,
        "std": SE * math.sqrt(2) * s * math.sqrt(max(kurt - 1, 0.0) / (4 * n)) + 1e-12,
    }
    for p in PERCENTILES:
        q = p / 100
        delta = 0.005
        lo, hi = np.quantile(both, [max(q - delta, 0), min(q + delta, 1)])
        density = (min(q + delta, 1) - max(q - delta, 0)) / max(hi - lo, 1e-12 * max(s, 1e-12))
        # a percentile sitting on a clamp (an atom, e.g. G = 0) has no spread at all
        tol[f"p{p:g}"] = SE * math.sqrt(2) * math.sqrt(q * (1 - q) / n) / density + 1e-9 * max(s, 1.0)
    return tol


def _stats(x: np.ndarray):
    out = {"mean": float(x.mean()), "std": float(x.std())}
    for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES)):
        out[f"p{p:g}"] = float(v)
    return out


class Table:
    def __init__(self):
        self.rows = []

    def compare(self, model: str, stage: str, level: str, ours: np.ndarray, theirs: np.ndarray):
        a, b, tol = _stats(ours), _stats(theirs), _tolerances(ours, theirs)
        for key in a:
            self.rows.append(
                (model, stage, level, key, a[key], b[key], a[key] - b[key], tol[key], abs(a[key] - b[key]) <= tol[key])
            )

    def print(self):
        print("| model | stage | target | stat | nabn-onnx | aihwkit | difference | tolerance | ok |")
        print("|---|---|---|---|---:|---:|---:|---:|---|")
        for m, st, lv, key, a, b, d, tol, ok in self.rows:
            print(f"| {m} | {st} | {lv} | {key} | {a:.5g} | {b:.5g} | {d:+.3g} | {tol:.3g} | {'yes' if ok else 'NO'} |")

    def failures(self):
        return [r for r in self.rows if not r[-1]]


# --------------------------------------------------------------------------- comparisons


def _torch_rng(torch, seed):
    torch.manual_seed(seed)


def compare_pcm(table, aih, torch, per_level, seed, times):
    theirs_model = aih["noise.pcm"].PCMLikeNoiseModel(g_max=25.0)
    for x in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        g = np.full(per_level, 25.0 * x)
        gt = torch.tensor(g)
        ours_model = PCMNoise()
        rng = np.random.default_rng([seed, int(x * 1000)])
        ours_prog = ours_model.program(g, rng)
        ours_nu = ours_model.drift_coefficients(g, rng)
        _torch_rng(torch, seed + int(x * 1000))
        theirs_prog = theirs_model.apply_programming_noise_to_conductance(gt.clone())
        theirs_nu = theirs_model.generate_drift_coefficients(gt.clone())
        level = f"G_T={25.0 * x:g}uS"
        table.compare("pcm", "programmed", level, ours_prog, theirs_prog.numpy())
        table.compare("pcm", "drift nu", level, ours_nu, theirs_nu.numpy())
        for t in times:
            ours_t = PCMNoise(t_inference=t).drift(ours_prog, ours_nu, rng)
            theirs_t = theirs_model.apply_drift_noise_to_conductance(theirs_prog.clone(), theirs_nu, t)
            table.compare("pcm", f"t={_when(t)}", level, ours_t, theirs_t.numpy())


def compare_pcm_tile(table, aih, torch, n_weights, seed, times):
    """Whole tensors through program_weights / drift_weights, with and without GDC, binned by target."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n_weights).clip(-4, 4)
    theirs_model = aih["noise.pcm"].PCMLikeNoiseModel(g_max=25.0)
    gdc = aih["compensation.drift"].GlobalDriftCompensation()
    _torch_rng(torch, seed)
    wt = torch.tensor(w).reshape(1000, -1)
    theirs_prog, nus = theirs_model.apply_programming_noise(wt)
    edges = np.array([-4, -2, -1, -0.25, 0.25, 1, 2, 4])
    for t in times:
        theirs_final = theirs_model.apply_drift_noise(theirs_prog, nus, t)
        # base.py:55-61 with drift.py:28-30, the readout of an identity input is the weights themselves
        alpha = float(gdc.apply(theirs_final / abs(w).max(), gdc.readout(theirs_prog / abs(w).max())))
        theirs_gdc = (theirs_final * alpha).numpy().ravel()
        theirs_final = theirs_final.numpy().ravel()
        ours_final = PCMNoise(t_inference=t, seed=seed).apply("w", w)
        ours_gdc = PCMNoise(t_inference=t, seed=seed, compensation="global").apply("w", w)
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (w >= lo) & (w < hi)
            level = f"W in [{lo:g},{hi:g})"
            table.compare("pcm tile", f"t={_when(t)}", level, ours_final[sel] - w[sel], theirs_final[sel] - w[sel])
            table.compare("pcm tile+GDC", f"t={_when(t)}", level, ours_gdc[sel] - w[sel], theirs_gdc[sel] - w[sel])


def compare_rram(table, aih, torch, per_level, seed):
    theirs_model = aih["noise.reram"].ReRamWan2022NoiseModel(g_max=25.0)
    for x in (0.0, 0.25, 0.5, 0.75, 1.0):
        g = np.full(per_level, 25.0 * x)
        gt = torch.tensor(g)
        rng = np.random.default_rng([seed, 7, int(x * 1000)])
        _torch_rng(torch, seed + 7 + int(x * 1000))
        level = f"G_T={25.0 * x:g}uS"
        ours_prog = RRAMNoise().program(g, rng)
        theirs_prog = theirs_model.apply_programming_noise_to_conductance(gt.clone())
        table.compare("rram", "programmed", level, ours_prog, theirs_prog.numpy())
        for t in (86400.0, 172800.0):
            ours_t = RRAMNoise(t_inference=t).drift(ours_prog, g, rng)
            theirs_t = theirs_model.apply_drift_noise_to_conductance(theirs_prog, gt.clone(), t)
            table.compare("rram", f"t={_when(t)}", level, ours_t, theirs_t.numpy())


def compare_cmo(table, aih, torch, per_level, seed, times):
    theirs_model = aih["noise.reram"].ReRamCMONoiseModel(acceptance_range=0.2)
    for x in (0.0, 0.5, 1.0):
        g = np.full(per_level, 9.0 + (88.199997 - 9.0) * x)
        gt = torch.tensor(g)
        rng = np.random.default_rng([seed, 11, int(x * 1000)])
        _torch_rng(torch, seed + 11 + int(x * 1000))
        level = f"G_T={g[0]:.4g}uS"
        ours_prog = RRAMCMONoise().program(g, rng)
        theirs_prog = theirs_model.apply_programming_noise_to_conductance(gt.clone())
        table.compare("rram-cmo", "programmed", level, ours_prog, theirs_prog.numpy())
        for t in times:
            ours_t = RRAMCMONoise(t_inference=t).drift(ours_prog, None, rng)
            theirs_t = theirs_model.apply_drift_noise_to_conductance(theirs_prog.clone(), gt, t)
            table.compare("rram-cmo", f"t={_when(t)}", level, ours_t, theirs_t.numpy())


def _when(t: float) -> str:
    for unit, seconds in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0)):
        if t >= seconds:
            return f"{t / seconds:g}{unit}"
    return f"{t:g}s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aihwkit", help="aihwkit source: a folder or the .tar.gz of pip download")
    parser.add_argument("--per-level", type=int, default=200_000, help="devices per target conductance")
    parser.add_argument("--tile-weights", type=int, default=1_000_000, help="weights in the tile-flow comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    aih, version, root = load_aihwkit(args.aihwkit)
    times = (3600.0, 86400.0, 365 * 86400.0)
    table = Table()
    compare_pcm(table, aih, torch, args.per_level, args.seed, times)
    compare_pcm_tile(table, aih, torch, args.tile_weights, args.seed, times)
    compare_rram(table, aih, torch, args.per_level, args.seed)
    compare_cmo(table, aih, torch, args.per_level, args.seed, times)
    table.print()
    bad = table.failures()
    print(
        f"\naihwkit {version} from {root}; {args.per_level} devices per target conductance, "
        f"{args.tile_weights} weights per tile; {len(table.rows) - len(bad)}/{len(table.rows)} statistics within "
        f"{SE:g} standard errors, in {time.perf_counter() - started:.1f}s"
    )
    for row in bad:
        print("outside tolerance:", row)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
