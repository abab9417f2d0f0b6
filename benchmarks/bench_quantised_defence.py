"""How much of input quantisation's robustness is real: the defence of notebook 10
under gradient attacks, through BPDA, and under a black-box attack.

    python benchmarks/bench_quantised_defence.py [--n 100] [--eps 0.15] [--queries 5000]

The digits CNN (trained here, seed 0) behind a five-level quantisation of its
input (``min(floor(5 v), 4) / 4``), on the first n test digits at L-inf eps:

* the undefended CNN under APGD-CE and APGD-T;
* the quantised model under the same suite (its gradient is zero almost
  everywhere), with ``diagnose=True``;
* the same suite through BPDA (``jaxadv.bpda``: the quantisation forward, the
  identity backward), judged on the quantised model itself;
* Square (``--queries``), which needs no gradient, on the quantised model;
* the per-example worst case of the BPDA suite and Square.

If BPDA and Square agree, what is left is the defence's own robustness, not an
attack's failure: the quantisation cannot be crossed within eps on those digits.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

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
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.15)
    parser.add_argument("--queries", type=int, default=5000)
    args = parser.parse_args()
    print(describe())
    train, test = examples.load_digits(0)
    model = examples.DigitsCNN()
    variables = examples.train_classifier(model, train, seed=0)
    x, y = test.x[: args.n], test.y[: args.n]

    def five_levels(v: jax.Array) -> jax.Array:
        return jnp.minimum(jnp.floor(5 * v), 4) / 4

    plain = jaxadv.from_flax(model, variables)
    quantised = jaxadv.from_apply(lambda p, v: model.apply(p, five_levels(v)), variables)
    through = jaxadv.from_apply(lambda p, v: model.apply(p, jaxadv.bpda(five_levels)(v)), variables)

    def square(
        f: object, xb: object, yb: object, *, key: object, eps: float, norm: str, bounds: object
    ) -> object:
        return jaxadv.square(f, xb, yb, key=key, eps=eps, norm=norm, bounds=bounds, queries=args.queries)

    gradient = ["apgd-ce", "apgd-t"]
    black_box = jaxadv.evaluation.SuiteAttack(f"square-{args.queries}", square, black_box=True)
    settings = dict(eps=args.eps, key=jax.random.key(0), progress=False, checks=False)
    rows = [
        ("undefended CNN, APGD-CE + APGD-T", jaxadv.evaluate(plain, x, y, suite=gradient, **settings)),
        (
            "quantised, APGD-CE + APGD-T",
            jaxadv.evaluate(quantised, x, y, suite=gradient, diagnose=True, **settings),
        ),
        ("quantised, the same through BPDA", jaxadv.evaluate(through, x, y, suite=gradient, **settings)),
        (
            f"quantised, Square ({args.queries} queries)",
            jaxadv.evaluate(quantised, x, y, suite=[black_box], **settings),
        ),
        (
            "quantised, BPDA suite then Square",
            jaxadv.evaluate(through, x, y, suite=[*gradient, black_box], **settings),
        ),
    ]
    print(f"digits CNN, {args.n} test digits, L-inf eps {args.eps}")
    print(f"{'attack':45s} robust accuracy")
    for name, res in rows:
        print(f"{name:45s} {res.robust_accuracy:7.1%}")
    print(f"indicators on the quantised model: {rows[1][1].indicator_counts()}")


if __name__ == "__main__":
    main()
