"""Robust accuracy of a zoo model in float32 and in bfloat16, on the same examples.

    python benchmarks/bench_mixed_precision.py              # 400 test digits: ~10 min on 2 CPU cores
    python benchmarks/bench_mixed_precision.py --n 797      # all test digits
    python benchmarks/bench_mixed_precision.py --quick      # a smoke run

Trained zoo weights cannot be downloaded here, so a small zoo architecture
(``wrn-16-1`` by default: RobustBench's WideResNet at depth 16, width 1) is
trained on the bundled digits, upsampled to 32x32x3 (each pixel repeated 4x4,
the grey level copied to three channels): a few clean epochs, then a few
epochs of PGD adversarial training (3 steps, L-inf ``--eps``) so that the
model is robust to a degree and its robust accuracy sits between 0 and its
clean accuracy. The digits are split 1000 / 797 (training / test) to have
more test examples than the usual 1400 / 397 split.

Then, on the first ``--n`` test examples (400; 797 is all), against the float32 model and against
``jaxadv.sharding.cast_model(logits_fn, jnp.bfloat16)`` (parameters and inputs
in bfloat16; the attacks keep their iterates and losses in float32):

* clean accuracy;
* PGD-10, L-inf ``eps`` (8/255), step ``eps / 4``, random start;
* APGD-CE, 100 iterations, one restart.

Robust accuracy counts an example when the model classifies both the clean
and the adversarial input correctly, each model judged by itself. Printed:
both accuracies, their difference in percentage points (the issue's target is
at most 0.5), and how many examples changed outcome in either direction. The
attacks use the same key in both precisions. A control row beside them, the
float32 model attacked with another key, shows how far the attacks' own
randomness moves the same figures.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxadv
from jaxadv import examples, zoo
from jaxadv.sharding import cast_model

NUM_TRAIN = 1000
TARGET_PP = 0.5


def digits_32x32x3(seed: int = 0) -> tuple[examples.Split, examples.Split]:
    """The bundled digits, upsampled to ``[n, 32, 32, 3]`` and split 1000 / 797."""
    train, test = examples.load_digits(seed)
    x = np.concatenate([train.x, test.x])
    y = np.concatenate([train.y, test.y])
    x = np.repeat(np.repeat(np.repeat(x, 4, axis=1), 4, axis=2), 3, axis=3)
    return examples.Split(x[:NUM_TRAIN], y[:NUM_TRAIN]), examples.Split(x[NUM_TRAIN:], y[NUM_TRAIN:])


def train(
    module: Any,
    data: examples.Split,
    *,
    clean_epochs: int,
    adversarial_epochs: int,
    eps: float,
    attack_steps: int = 3,
    attack_step_size: float | None = None,
    eps_warmup: int = 0,
    seed: int = 0,
) -> Any:
    """Adam (one-cycle schedule, batch 64) on the parameters: ``clean_epochs`` of clean training,
    then ``adversarial_epochs`` of PGD adversarial training (``attack_steps`` L-inf steps of
    ``attack_step_size``, default ``eps / 2``); over the first ``eps_warmup`` of those
    epochs the radius and step grow linearly to their final values. Batch norm, if any,
    keeps its initial statistics (inference mode throughout). Returns the variables."""
    step_size = eps / 2 if attack_step_size is None else attack_step_size
    batch = 64
    variables = jax.jit(module.init)(jax.random.key(seed), jnp.asarray(data.x[:1]))
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    per_epoch = len(data.y) // batch
    schedule = optax.cosine_onecycle_schedule(per_epoch * (clean_epochs + adversarial_epochs), 3e-3)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)

    def loss(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = module.apply({"params": p, **rest}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @functools.partial(jax.jit, static_argnames="adv")
    def step(
        p: Any, opt_state: Any, xb: jax.Array, yb: jax.Array, key: jax.Array, scale: jax.Array, adv: bool
    ) -> Any:
        if adv:
            f = jaxadv.from_flax(module, {"params": jax.lax.stop_gradient(p), **rest})
            xb = jaxadv.pgd(
                f, xb, yb, key=key, eps=scale * eps, step_size=scale * step_size, steps=attack_steps
            )
        grads = jax.grad(loss)(p, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    for epoch in range(clean_epochs + adversarial_epochs):
        order = rng.permutation(len(data.y))
        adversarial = epoch - clean_epochs  # index among the adversarial epochs
        scale = jnp.float32(min(1.0, (adversarial + 1) / eps_warmup) if eps_warmup else 1.0)
        for start in range(0, per_epoch * batch, batch):
            idx = order[start : start + batch]
            key, sub = jax.random.split(key)
            params, opt_state = step(
                params, opt_state, data.x[idx], data.y[idx], sub, scale, adv=adversarial >= 0
            )
    return {"params": params, **rest}


def robust(logits_fn: Any, x: np.ndarray, x_adv: Any, y: np.ndarray) -> np.ndarray:
    """Per example: correct on ``x`` and on ``x_adv``."""
    clean = np.asarray(jaxadv.predict(logits_fn, x)) == y
    return clean & (np.asarray(jaxadv.predict(logits_fn, x_adv)) == y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="wrn-16-1")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--clean-epochs", type=int, default=6)
    parser.add_argument("--adversarial-epochs", type=int, default=4)
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--n", type=int, default=400, help="test examples (at most 797)")
    parser.add_argument("--quick", action="store_true", help="1+1 epochs, 64 examples, APGD-10")
    args = parser.parse_args()
    if args.quick:
        args.clean_epochs, args.adversarial_epochs, args.apgd_steps, args.n = 1, 1, 10, 64

    device = jax.devices()[0]
    print("machine")
    print(f"  jax device     {device.platform}: {device.device_kind} (x{jax.device_count()})")
    print(f"  cpu            {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"  jax            {jax.__version__}")
    print(f"  load average   {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    train_set, test_set = digits_32x32x3()
    x, y = test_set.x[: args.n], test_set.y[: args.n]
    module = zoo.build(args.arch)
    start = time.perf_counter()
    variables = train(
        module,
        train_set,
        clean_epochs=args.clean_epochs,
        adversarial_epochs=args.adversarial_epochs,
        eps=args.eps,
    )
    print(
        f"\n{args.arch} on digits 32x32x3: {args.clean_epochs} clean + {args.adversarial_epochs} "
        f"PGD-3 epochs in {time.perf_counter() - start:.0f} s; {len(y)} test examples, "
        f"L-inf eps {args.eps * 255:.3g}/255"
    )
    f32 = jaxadv.from_flax(module, variables)
    # Runs: (model, attack key). "float32, key 1" is the control: how far the attack's own
    # randomness moves robust accuracy, to read the precision gap against.
    runs = {
        "float32": (f32, jax.random.key(0)),
        "bfloat16": (cast_model(f32, jnp.bfloat16), jax.random.key(0)),
        "float32, key 1": (f32, jax.random.key(1)),
    }
    attacks: dict[str, Callable[[Any, jax.Array], Any]] = {
        "clean": lambda f, key: x,
        "PGD-10": lambda f, key: jaxadv.pgd(f, x, y, key=key, eps=args.eps, step_size=args.eps / 4, steps=10),
        f"APGD-CE-{args.apgd_steps}": lambda f, key: jaxadv.apgd(
            f, x, y, key=key, eps=args.eps, steps=args.apgd_steps
        ),
    }
    print(
        f"  {'':14s} {'float32':>9s} {'bfloat16':>9s} {'diff pp':>8s} {'changed':>8s} "
        f"{'f32 key 1':>10s} {'diff pp':>8s} {'changed':>8s} {'s f32':>7s} {'s bf16':>7s}"
    )
    worst = 0.0
    for name, attack in attacks.items():
        outcome, seconds = {}, {}
        for run, (f, key) in runs.items():
            if name == "clean" and run == "float32, key 1":
                outcome[run] = outcome["float32"]
                continue
            t0 = time.perf_counter()
            x_adv = np.asarray(attack(f, key))
            seconds[run] = time.perf_counter() - t0
            if name == "clean":
                outcome[run] = np.asarray(jaxadv.predict(f, x)) == y
            else:
                outcome[run] = robust(f, x, x_adv, y)
        a32, a16, a32k = (float(outcome[r].mean()) for r in runs)
        diff, diff_key = 100 * (a16 - a32), 100 * (a32k - a32)
        changed = int(np.sum(outcome["float32"] != outcome["bfloat16"]))
        changed_key = int(np.sum(outcome["float32"] != outcome["float32, key 1"]))
        if name != "clean":
            worst = max(worst, abs(diff))
        print(
            f"  {name:14s} {a32:9.2%} {a16:9.2%} {diff:+8.2f} {changed:8d} "
            f"{a32k:10.2%} {diff_key:+8.2f} {changed_key:8d} "
            f"{seconds['float32']:7.1f} {seconds['bfloat16']:7.1f}"
        )
    verdict = "met" if worst <= TARGET_PP else "NOT met"
    print(
        f"\nlargest robust-accuracy gap {worst:.2f} pp (one example is {100 / len(y):.2f} pp); "
        f"target <= {TARGET_PP} pp: {verdict}"
    )
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
