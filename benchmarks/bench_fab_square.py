"""FAB-T and Square per step: jaxadv against AutoAttack's, on the same weights.

    python benchmarks/bench_fab_square.py [--n 128] [--size 28] [--steps 100] [--queries 300]

The model is the digits CNN (``DigitsCNN``: two strided 3x3 convolutions, 32
and 64 channels, a linear head) at ``size x size x 1`` with its initial
weights, and its PyTorch twin (``tests/torch_models.TorchDigitsCNN``; the
logits are checked to agree). Weights do not change the cost of a step, but
they change how long AutoAttack's Square keeps an example (it stops querying
the ones it fooled), so Square runs at a radius so small that nothing is
fooled: every step queries the whole batch in both libraries. FAB-T runs one
target class; AutoAttack's FAB runs its iterations on every example whatever
happens. Printed: seconds per step of each (minimum over ``--repeats`` calls
after a warm-up), the model's forward pass and input gradient alone in both
libraries (the floor of a Square step and, roughly, of an FAB step), and
jaxadv's per-operation profile of one FAB-T step (``jax.profiler``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import examples

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from machine import describe, load_average  # noqa: E402


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def profile_step(fn: Callable[[], Any], steps: int, top: int = 12) -> list[tuple[str, float]]:
    """The ``top`` operations of ``fn`` by time per step (ms), one profiled call."""
    directory = tempfile.mkdtemp(prefix="jaxadv-prof-")
    try:
        with jax.profiler.trace(directory):
            jax.block_until_ready(fn())
        data = jax.profiler.ProfileData.from_file(
            glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)[0]
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    totals: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "Slinky", "Threadpool", "end:")):
                    totals[event.name] += event.duration_ns
    return [(name, ns / 1e6 / steps) for name, ns in totals.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=100, help="FAB-T iterations")
    parser.add_argument("--queries", type=int, default=300, help="Square queries")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack
    from torch_models import TorchDigitsCNN, max_logit_gap, to_nchw

    torch.set_num_threads(1)
    print(describe(torch=f"{torch.__version__}, 1 thread"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (args.n, args.size, args.size, 1)).astype(np.float32)
    module = examples.DigitsCNN()
    variables = module.init(jax.random.key(0), jnp.asarray(x[:1]))
    f = jaxadv.from_flax(module, variables)
    twin = TorchDigitsCNN(variables, input_size=args.size).eval()
    assert max_logit_gap(twin, f, x) < 1e-4
    xj = jnp.asarray(x)
    y = np.asarray(jaxadv.predict(f, xj))
    yj = jnp.asarray(y)
    xt, yt = to_nchw(x), torch.from_numpy(y.astype(np.int64))

    forward = jax.jit(lambda f, x: f(x))
    gradient = jax.jit(
        lambda f, x: jax.grad(lambda v: jnp.sum(jaxadv.cross_entropy(f(v), jax.nn.one_hot(yj, 10))))(x)
    )

    def torch_forward() -> Any:
        with torch.no_grad():
            return twin(xt)

    def torch_gradient() -> Any:
        v = xt.clone().requires_grad_(True)
        return torch.autograd.grad(torch.nn.functional.cross_entropy(twin(v), yt, reduction="sum"), v)[0]

    eps_fab, eps_square = 0.15, 1e-4
    fab_ours = lambda: jaxadv.fab_targeted(  # noqa: E731
        f, xj, yj, key=jax.random.key(0), eps=eps_fab, steps=args.steps, num_target_classes=1
    )
    fab_ref = FABAttack_PT(
        twin,
        norm="Linf",
        eps=eps_fab,
        n_restarts=1,
        n_iter=args.steps,
        n_target_classes=1,
        device="cpu",
        seed=0,
    )
    fab_ref.targeted = True
    square_ours = lambda: jaxadv.square(  # noqa: E731
        f, xj, yj, key=jax.random.key(0), eps=eps_square, queries=args.queries
    )
    square_ref = SquareAttack(
        twin,
        p_init=0.8,
        n_queries=args.queries,
        eps=eps_square,
        norm="Linf",
        n_restarts=1,
        device="cpu",
        seed=0,
    )
    rows = {
        "forward, jax": (best_of(lambda: forward(f, xj), 10), 1),
        "forward, torch": (best_of(torch_forward, 10), 1),
        "input gradient, jax": (best_of(lambda: gradient(f, xj), 10), 1),
        "input gradient, torch": (best_of(torch_gradient, 10), 1),
        "FAB-T step, jaxadv": (best_of(fab_ours, args.repeats), args.steps),
        "FAB-T step, AutoAttack": (best_of(lambda: fab_ref.perturb(xt, yt), args.repeats), args.steps),
        "Square step, jaxadv": (best_of(square_ours, args.repeats), args.queries),
        "Square step, AutoAttack": (best_of(lambda: square_ref.perturb(xt, yt), args.repeats), args.queries),
    }
    print(f"\nDigitsCNN at {args.size}x{args.size}x1, batch {args.n}; ms per call or per step")
    for name, (seconds, steps) in rows.items():
        print(f"  {name:28s} {seconds / steps * 1e3:9.2f}")
    print("\njaxadv FAB-T, operations per step (ms):")
    for name, ms in profile_step(fab_ours, args.steps):
        print(f"  {name:34s} {ms:8.3f}")
    print("\njaxadv Square, operations per step (ms):")
    for name, ms in profile_step(square_ours, args.queries):
        print(f"  {name:34s} {ms:8.3f}")
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
