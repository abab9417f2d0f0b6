"""The composed attacks (``jaxadv.compose``) against the gradient floor, against a
hand-written PGD, and the cost per step of the new members.

Run from the repository root::

    python benchmarks/bench_compose.py            # 5 interleaved rounds
    python benchmarks/bench_compose.py --quick    # 3 rounds

Printed, from one run, on the digits CNN (``jaxadv.examples.DigitsCNN``, batch
397 of the digits test split, L-inf eps 0.1, 10 steps):

* PGD-10 and MI-FGSM-10, built by :class:`jaxadv.compose.Attack`, called directly
  (one cached compiled loop) and inside ``jax.jit`` (the engine's ``fori_loop``),
  over the floor (10 jitted input-gradients, each waited for) and over a minimal
  hand-written PGD-10 (one ``lax.fori_loop`` of ``grad``, ``sign``, ``clip``, under
  ``jit``, no library code; written in this file);
* the time of each new member at 10 steps over PGD-10's, beside the number of
  forward-backward passes per step its algorithm needs: NI/TI/DI-FGSM 1, VMI-FGSM
  with ``N`` neighbours ``1 + N``, EOT-PGD with ``n`` samples ``n`` (with a random
  transform; on a deterministic model without one, XLA hoists the ``n``
  identical gradients out of the draws' loop and EOT costs one gradient).

The old (pre-``compose``) and new implementations cannot be imported side by
side, so this script measures the new one against the floor and the hand-written
loop; ``bench_core.py`` gives the same ratios for BIM with the history of the
engine. Timings as in ``bench_core.py``: one warm-up per variant, then the
variants in turn (interleaved, so that load from other processes hits them
alike); ratios use the minima.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from bench_core import gradient_fn, interleaved, load_average, print_machine, spread

import jaxadv
from jaxadv import compose, examples
from jaxadv.models import split_model

EPS, STEPS = 0.1, 10
ALPHA = 2.5 * EPS / STEPS
BATCH = 397


def hand_written_pgd(module: Any) -> Callable[..., jax.Array]:
    """PGD-10 as one would write it without the library: random start, then
    ``x <- clip(x + alpha * sign(grad))`` projected onto the eps-ball, in a
    ``lax.fori_loop`` under ``jit``."""

    @functools.partial(jax.jit, static_argnames="steps")
    def run(variables: Any, x: jax.Array, y: jax.Array, key: jax.Array, *, steps: int) -> jax.Array:
        def loss(xa: jax.Array) -> jax.Array:
            logits = module.apply(variables, xa)
            return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

        def step(_: Any, xa: jax.Array) -> jax.Array:
            xa = xa + ALPHA * jnp.sign(jax.grad(loss)(xa))
            return jnp.clip(x + jnp.clip(xa - x, -EPS, EPS), 0.0, 1.0)

        x0 = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-EPS, maxval=EPS), 0.0, 1.0)
        return jax.lax.fori_loop(0, steps, step, x0)

    return run


PGD = compose.Attack(compose.loss_gradient(), compose.steepest(), norm="linf", random_start=True)
MI = compose.Attack(
    compose.loss_gradient(), compose.momentum(1.0), norm="linf", keep_best=True, step_factor=1.0
)


def _noise(key: jax.Array, x: jax.Array) -> jax.Array:
    """EOT's random transformation here: Gaussian noise (a transform that does not
    depend on its key would let XLA hoist the draws' identical gradients out of the
    loop, and EOT would cost one gradient per step)."""
    return x + 0.05 * jax.random.normal(key, x.shape)


def _composed(attack: compose.Attack, logits_fn: Any, x: jax.Array, y: jax.Array, key: Any) -> jax.Array:
    return attack(logits_fn, x, y, key=key, eps=EPS, step_size=ALPHA, steps=STEPS)


def _k_gradients(grad: Callable[..., jax.Array], params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    out = x
    for _ in range(STEPS):
        out = jax.block_until_ready(grad(params, x, y))
    return out


def bench_against_floor(module: Any, variables: Any, x: jax.Array, y: jax.Array, repeats: int) -> None:
    logits_fn = jaxadv.from_flax(module, variables)
    _, params = split_model(logits_fn)
    grad = gradient_fn(logits_fn)
    key = jax.random.key(0)
    hand = hand_written_pgd(module)
    in_jit = jax.jit(_composed)
    fns: dict[str, Callable[[], Any]] = {
        "floor: 10 gradients": functools.partial(_k_gradients, grad, params, x, y),
        "hand-written PGD-10 (jit fori)": functools.partial(hand, variables, x, y, key, steps=STEPS),
        "composed PGD-10, direct": functools.partial(_composed, PGD, logits_fn, x, y, key),
        "composed PGD-10, in jit": functools.partial(in_jit, PGD, logits_fn, x, y, key),
        "jaxadv.pgd, direct": functools.partial(
            jaxadv.pgd, logits_fn, x, y, key=key, eps=EPS, step_size=ALPHA, steps=STEPS
        ),
        "composed MI-FGSM-10, direct": functools.partial(_composed, MI, logits_fn, x, y, key),
        "composed MI-FGSM-10, in jit": functools.partial(in_jit, MI, logits_fn, x, y, key),
        "jaxadv.mifgsm, direct": functools.partial(
            jaxadv.mifgsm, logits_fn, x, y, eps=EPS, step_size=ALPHA, steps=STEPS
        ),
    }
    times = interleaved(fns, repeats)
    floor, ref = min(times["floor: 10 gradients"]), min(times["hand-written PGD-10 (jit fori)"])
    print(f"\n10 steps, batch {BATCH}: over the floor and over the hand-written PGD-10")
    print(f"  {'variant':32s} {'min ms':>9s} {'med ms':>9s}  spread   / floor  / hand")
    for name, ts in times.items():
        print(f"  {name:32s} {spread(ts)}  {min(ts) / floor:6.2f}x {min(ts) / ref:6.2f}x")


def bench_members(module: Any, variables: Any, x: jax.Array, y: jax.Array, repeats: int) -> None:
    logits_fn = jaxadv.from_flax(module, variables)
    key = jax.random.key(0)
    kw: dict[str, Any] = dict(eps=EPS, step_size=ALPHA, steps=STEPS)
    members: dict[str, tuple[float, Callable[[], Any]]] = {
        "PGD": (1, functools.partial(jaxadv.pgd, logits_fn, x, y, key=key, **kw)),
        "MI-FGSM": (1, functools.partial(jaxadv.mifgsm, logits_fn, x, y, **kw)),
        "NI-FGSM": (1, functools.partial(jaxadv.nifgsm, logits_fn, x, y, **kw)),
        "DI-FGSM (p=0.5)": (
            1,
            functools.partial(jaxadv.mifgsm, logits_fn, x, y, key=key, decay=0.0, diversity_prob=0.5, **kw),
        ),
        "TI-FGSM (k=5, no DI)": (
            1,
            functools.partial(jaxadv.tifgsm, logits_fn, x, y, kernel_size=5, diversity_prob=0.0, **kw),
        ),
        "TI-DI-FGSM (k=5)": (
            1,
            functools.partial(jaxadv.tifgsm, logits_fn, x, y, key=key, kernel_size=5, **kw),
        ),
        "VMI-FGSM (N=5)": (
            6,
            functools.partial(jaxadv.vmifgsm, logits_fn, x, y, key=key, num_neighbors=5, **kw),
        ),
        "VMI-FGSM (N=20)": (
            21,
            functools.partial(jaxadv.vmifgsm, logits_fn, x, y, key=key, num_neighbors=20, **kw),
        ),
        "EOT-PGD (n=1, noise)": (
            1,
            functools.partial(
                jaxadv.eot_pgd, logits_fn, x, y, key=key, num_samples=1, transform=_noise, **kw
            ),
        ),
        "EOT-PGD (n=4, noise)": (
            4,
            functools.partial(
                jaxadv.eot_pgd, logits_fn, x, y, key=key, num_samples=4, transform=_noise, **kw
            ),
        ),
        "EOT-PGD (n=8, noise)": (
            8,
            functools.partial(
                jaxadv.eot_pgd, logits_fn, x, y, key=key, num_samples=8, transform=_noise, **kw
            ),
        ),
        "EOT-PGD (n=8, no randomness)": (
            8,
            functools.partial(jaxadv.eot_pgd, logits_fn, x, y, key=key, num_samples=8, **kw),
        ),
    }
    times = interleaved({name: fn for name, (_, fn) in members.items()}, repeats)
    pgd = min(times["PGD"])
    print(f"\nnew members, 10 steps, batch {BATCH}, direct calls: time / PGD-10's time")
    print(f"  {'attack':28s} {'min ms':>9s} {'med ms':>9s}  spread   / PGD   gradients per step")
    for name, ts in times.items():
        print(f"  {name:28s} {spread(ts)}  {min(ts) / pgd:5.2f}x  {members[name][0]:g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per variant")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    print_machine(None, None)
    _, test = examples.load_digits(0)
    x, y = jnp.asarray(test.x[:BATCH]), jnp.asarray(test.y[:BATCH])
    module = examples.DigitsCNN()
    variables = module.init(jax.random.key(0), x[:1])  # random weights: timings do not depend on them
    bench_against_floor(module, variables, x, y, repeats)
    bench_members(module, variables, x, y, repeats)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
