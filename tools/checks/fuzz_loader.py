"""Fuzz the model loader: mutated bytes of valid small models must load or fail with NabnError.

Each case takes one of a few valid seed models, applies 1-4 mutations (bit flips,
truncation, splices of its own bytes, random overwrites, deletions, varint-boundary
bytes), writes it to a temporary folder and runs ``load_model`` + ``inspect_model`` +
``SplitBatchNormPass`` + ``InjectWeightNoisePass`` on it. Any exception other than
:class:`nabn_onnx.errors.NabnError` is a crash: the script prints its traceback and exits 1.

Usage::

    python -m tools.checks.fuzz_loader --cases 20000 --seed 0

prints the number of cases and a histogram of outcomes (success, and each error kind).
tests/test_hostile.py runs a bounded number of cases with the same mutators (``tests/fuzzing.py``).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.fuzzing import MUTATIONS, mutate, run_case, seed_models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="mutated models to try (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--save-crashes", metavar="DIR", help="write each crashing input here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    seeds = seed_models()
    kinds: collections.Counter = collections.Counter()
    details: collections.Counter = collections.Counter()
    crashes = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nabn-fuzz-") as tmp:
        for case in range(args.cases):
            base = seeds[int(rng.integers(len(seeds)))]
            ops = [str(op) for op in rng.choice(MUTATIONS, size=int(rng.integers(1, 5)))]
            data = mutate(base, ops, rng)
            kind, detail = run_case(data, Path(tmp))
            kinds[kind.split(":")[0]] += 1
            if kind.startswith("CRASH"):
                crashes.append((case, ops, kind, detail, data))
            else:
                details[detail] += 1
    seconds = time.perf_counter() - started
    print(f"fuzz_loader: {args.cases} cases (seed {args.seed}) in {seconds:.1f}s, {len(crashes)} crash(es)")
    print("outcomes:")
    for kind, count in kinds.most_common():
        print(f"  {count:7d}  {kind}")
    print("refusals by message:")
    for detail, count in details.most_common(25):
        print(f"  {count:7d}  {detail}")
    for case, ops, kind, detail, _data in crashes[:5]:
        print(f"\n--- crash in case {case} (mutations {ops}): {kind}\n{detail}")
    if args.save_crashes and crashes:
        out = Path(args.save_crashes)
        out.mkdir(parents=True, exist_ok=True)
        for case, _, _, _, data in crashes:
            (out / f"crash_{case}.onnx").write_bytes(data)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
