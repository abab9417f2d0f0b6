"""What the indicators of attack failure cost: evaluate(diagnose=True) against evaluate().

    python benchmarks/bench_diagnose.py [--n 397] [--eps 0.1] [--suite standard] [--repeats 2]

Evaluates the digits CNN (trained here, seed 0) on the first n test digits at
L-inf eps, with and without ``diagnose=True``, one after the other in the same
process, each after a warm-up run (compilation excluded); with ``--repeats``
the two alternate and the fastest of each is kept. Prints both times, their
ratio, and how many examples each indicator flagged. The suite's gradient
members keep traces of their runs (no extra model call); the rest costs one
gradient and four forward passes per batch, and a 5-step box-only attack on the
examples left robust. A suite without a gradient member pays a 20-step
diagnostic attack per batch instead.
"""

from __future__ import annotations

import argparse
import time

import jax

import jaxadv
from jaxadv import examples

try:
    from machine import describe
except ImportError:  # run from another directory
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=397)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--suite", default="standard")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(describe())
    train, test = examples.load_digits(0)
    model = examples.DigitsCNN()
    logits_fn = jaxadv.from_flax(model, examples.train_classifier(model, train, seed=0))
    x, y = test.x[: args.n], test.y[: args.n]

    def run(diagnose: bool) -> tuple[float, jaxadv.EvaluationResult]:
        start = time.perf_counter()
        res = jaxadv.evaluate(
            logits_fn, x, y, eps=args.eps, suite=args.suite, key=jax.random.key(0), progress=False,
            checks=False, diagnose=diagnose,
        )  # fmt: skip
        return time.perf_counter() - start, res

    run(False), run(True)  # compile both
    plain, diagnosed = float("inf"), float("inf")
    for _ in range(args.repeats):
        t, res = run(False)
        plain = min(plain, t)
        t, res_d = run(True)
        diagnosed = min(diagnosed, t)
    assert res.robust_accuracy == res_d.robust_accuracy  # diagnosing changes no figure
    print(
        f"digits CNN, {args.n} test digits, L-inf eps {args.eps}, suite {args.suite!r}: "
        f"robust accuracy {res.robust_accuracy:.4f}"
    )
    print(f"evaluate:                {plain:8.2f} s")
    print(f"evaluate(diagnose=True): {diagnosed:8.2f} s")
    print(f"time ratio diagnose / plain: {diagnosed / plain:.3f}x")
    print(f"indicators (examples flagged): {res_d.indicator_counts()}")


if __name__ == "__main__":
    main()
