"""Epoch time of each adversarial-training method relative to a clean epoch.

    python benchmarks/bench_training.py [--batch 128] [--repeats 7] [--features 64 128]

Each method is one compiled step from jaxadv.training (make_train_step /
make_free_train_step) on the digits CNN; an epoch is one pass over the 1400
training digits. Compilation is excluded (one warm-up step per method); the
methods' epochs are interleaved, repeated, and the minimum epoch time of each
is reported (the machine may be shared), as a ratio to the clean epoch.

Goals (issue 6): PGD-AT with k steps at most (k + 1) x 1.1 the clean epoch;
Fast-AT at most 2.2 x. TRADES with k steps costs about k + 2 forward/backward
passes of the batch (its outer pass runs clean and adversarial halves), and a
Free epoch with m replays about m clean epochs (Free runs epochs / m of them).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv import examples, training


def _epoch_runner(
    kind: str, step: Any, state: Any, x: np.ndarray, y: np.ndarray, batch: int
) -> Callable[[], float]:
    n = (len(y) // batch) * batch
    xb = [jnp.asarray(x[i : i + batch]) for i in range(0, n, batch)]
    yb = [jnp.asarray(y[i : i + batch]) for i in range(0, n, batch)]
    keys = list(jax.random.split(jax.random.key(0), len(xb)))
    holder = {"state": state, "delta": jnp.zeros_like(xb[0])}

    def run() -> float:
        s, d = holder["state"], holder["delta"]
        start = time.perf_counter()
        for xi, yi, k in zip(xb, yb, keys, strict=True):
            if kind == "free":
                s, d, _ = step(s, d, xi, yi, k)
            else:
                s, _ = step(s, xi, yi, k)
        jax.block_until_ready((s, d))
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--features", type=int, nargs=2, default=(64, 128))
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument(
        "--only", nargs="*", default=None, help="a subset of the methods (clean is always run)"
    )
    args = parser.parse_args()

    train, _ = examples.load_digits(0)
    model = examples.DigitsCNN(features=tuple(args.features))
    tx = optax.adam(1e-3)
    variables = model.init(jax.random.key(0), jnp.asarray(train.x[:1]))
    state = training.init_train_state(variables, tx)
    eps = args.eps

    configs: dict[str, tuple[str, Any, float | None]] = {
        "clean": ("step", training.make_train_step(model, tx, method="clean"), None),
        "PGD-AT k=3": (
            "step",
            training.make_train_step(model, tx, method="pgd", eps=eps, step_size=eps / 2, steps=3),
            4 * 1.1,
        ),
        "PGD-AT k=7": (
            "step",
            training.make_train_step(model, tx, method="pgd", eps=eps, step_size=eps / 4, steps=7),
            8 * 1.1,
        ),
        "Fast-AT": ("step", training.make_train_step(model, tx, method="fast", eps=eps), 2.2),
        "TRADES k=7": (
            "step",
            training.make_train_step(model, tx, method="trades", eps=eps, step_size=eps / 4, steps=7),
            None,
        ),
        "Free m=4 (one pass)": ("free", training.make_free_train_step(model, tx, eps=eps, replays=4), None),
    }
    if args.only:
        configs = {k: v for k, v in configs.items() if k == "clean" or any(o in k for o in args.only)}
    runners = {}
    for name, (kind, step, _) in configs.items():
        run = _epoch_runner(kind, step, state, train.x, train.y, args.batch)
        run()  # compile and warm up
        runners[name] = run
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name].append(run())

    clean = min(times["clean"])
    where = f"{platform.machine()}, {os.cpu_count()} CPU cores, {jax.devices()[0].platform}"
    print(f"# epoch time relative to a clean epoch ({where}, jax {jax.__version__})")
    print(f"# batch {args.batch}, DigitsCNN{tuple(args.features)}, eps {eps}, {args.repeats} repeats")
    print(f"{'method':22s} {'epoch (ms)':>11s} {'ratio':>7s} {'median':>7s} {'goal':>7s}")
    for name, (_, _, goal) in configs.items():
        best, median = min(times[name]), float(np.median(times[name]))
        goal_s = f"<= {goal:.1f}" if goal is not None else ""
        ok = "" if goal is None else ("  ok" if best / clean <= goal else "  MISSED")
        print(f"{name:22s} {best * 1e3:11.1f} {best / clean:7.2f} {median / clean:7.2f} {goal_s:>7s}{ok}")


if __name__ == "__main__":
    main()
