"""PGD adversarial training at a large radius: from the first step, or with eps ramped up.

    python benchmarks/bench_eps_ramp.py [--eps 0.3] [--epochs 6] [--ramp-epochs 1]

On MNIST, PGD-AT at eps = 0.3 from the first step can stay at chance accuracy
for good (the loss stuck at log 10); a linear ramp of eps over the first epoch
trains. This script runs both on the bundled digits (8x8, pixels in [0, 1];
MNIST is not available offline) with the digits CNN, the same optimiser, data
order, keys and PGD-10 (step eps / 4) inside jaxadv.training.make_train_step:

* ``constant``: ``eps`` from the first step;
* ``ramp``: ``eps=optax.linear_schedule(0, eps, steps_per_epoch * ramp_epochs)``,
  the step size ``eps(t) / 4`` a schedule too.

After every epoch it runs jaxadv.training.robust_accuracy_monitor on the test
split (PGD-10 at the full eps) and prints the clean and PGD accuracies and
whether the monitor flagged the run as stalled at chance. At the end: clean
and PGD-40 test accuracy of both models. Nothing is timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings
from typing import Any

import jax
import numpy as np
import optax

import jaxadv
from jaxadv import examples, training


def train(
    schedule: Any, step_size: Any, *, epochs: int, batch: int, lr: float, seed: int, eps: float, log: bool
) -> tuple[Any, list[str]]:
    train_split, test = examples.load_digits(seed)
    model = examples.DigitsCNN()
    tx = optax.adam(lr)
    state = training.init_train_state(model.init(jax.random.key(seed), train_split.x[:1]), tx)
    step = training.make_train_step(model, tx, method="pgd", eps=schedule, step_size=step_size, steps=10)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    monitor = None
    lines = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(train_split.y))
        losses = []
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start : start + batch]
            key, sub = jax.random.split(key)
            state, metrics = step(state, train_split.x[idx], train_split.y[idx], sub)
            losses.append(float(metrics["loss"]))
        f = jaxadv.from_flax(model, {"params": state.params})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", training.ChanceAccuracyWarning)
            monitor = training.robust_accuracy_monitor(
                f, test.x, test.y, monitor, step=int(state.step), key=jax.random.key(0), eps=eps, steps=10
            )
        line = (
            f"  epoch {epoch}: loss {np.mean(losses):.3f}, clean {monitor.last_clean_accuracy:.1%}, "
            f"PGD-10 {monitor.last_accuracy:.1%}, chance {monitor.chance:.1%}, "
            f"stalled={monitor.stalled}"
        )
        lines.append(line)
        if log:
            print(line, flush=True)
    return jaxadv.from_flax(model, {"params": state.params}), lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--ramp-epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {cpu}, {os.cpu_count()} CPUs")
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    _, test = examples.load_digits(args.seed)
    steps_per_epoch = 1400 // args.batch
    eps = args.eps
    ramp = optax.linear_schedule(0.0, eps, transition_steps=max(1, int(steps_per_epoch * args.ramp_epochs)))
    runs = {
        "constant": (eps, eps / 4),
        f"ramp over {args.ramp_epochs:g} epoch(s)": (ramp, lambda t: ramp(t) / 4),
    }
    final = {}
    for name, (schedule, step_size) in runs.items():
        print(f"{name} (eps={eps:g}, PGD-10 with step eps/4):", flush=True)
        f, _ = train(
            schedule, step_size, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed, eps=eps,
            log=True,
        )  # fmt: skip
        clean = examples.accuracy(f, test.x, test.y)
        x_adv = jaxadv.pgd(f, test.x, test.y, key=jax.random.key(1), eps=eps, step_size=eps / 10, steps=40)
        final[name] = (clean, examples.accuracy(f, x_adv, test.y))
    print(f"\nafter {args.epochs} epochs, on the {len(test.y)} test digits at eps={eps:g}:")
    for name, (clean, robust) in final.items():
        print(f"  {name:<24} clean {clean:6.1%}   PGD-40 {robust:6.1%}")


if __name__ == "__main__":
    main()
