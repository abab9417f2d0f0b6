"""Seconds per example of the standard suite, smooth_certify at n = 100,000 and CROWN.

    python benchmarks/bench_per_example.py [--n 64] [--zoo-n 16] [--skip-zoo]

Two models:

* the digits CNN (``jaxadv.examples.DigitsCNN``, 8x8x1, trained as in the
  tests), and the digits MLP for CROWN;
* a zoo model at small width, ``zoo.build("wrn-10-1")`` (WideResNet-10-1 on
  32x32x3 CIFAR-shaped inputs) with random weights and random batch-norm
  statistics, labels its own predictions (checkpoints cannot be downloaded
  here).

For each, on this machine: ``jaxadv.evaluate(suite="standard")`` at L-inf eps
(0.1 on the digits, 8/255 on the zoo model; ``checks=False``), called twice,
cold (compilation included) and warm; ``certify.smooth_certify`` with
sigma = 0.25, n0 = 100, n = 100,000; ``certify.crown_bounds`` at the same eps.
Each figure is wall seconds divided by the number of examples. The suite's cost
depends on the model: an attack runs only on the examples every earlier one
failed on, so the robust accuracy is printed beside it (a robust model pays
for all four attacks on most examples).
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

import jaxadv
from jaxadv import certify, examples, zoo


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def _suite(name: str, f: Any, x: np.ndarray, y: np.ndarray, eps: float, batch: int) -> None:
    def run() -> Any:
        return jaxadv.evaluate(
            f, x, y, eps=eps, suite="standard", key=jax.random.key(0), batch_size=batch, progress=False,
            checks=False,
        )  # fmt: skip

    cold, result = _timed(run)
    warm, result = _timed(run)
    n = len(y)
    per = ", ".join(f"{k} {v / n:.3g}" for k, v in result.seconds.items())
    print(
        f"{name}: standard suite at eps={eps:.4g}, {n} examples: {cold / n:.3g} s/example cold, "
        f"{warm / n:.3g} warm (robust accuracy {result.robust_accuracy:.1%}; "
        f"warm s/example by attack: {per})",
        flush=True,
    )


def _smoothing(name: str, f: Any, x: np.ndarray, batch: int) -> None:
    def run() -> Any:
        return certify.smooth_certify(
            f, x, key=jax.random.key(0), sigma=0.25, n0=100, n=100_000, alpha=0.001, batch_size=batch
        )

    cold, _ = _timed(run)
    warm, _ = _timed(run)
    n = len(x)
    print(
        f"{name}: smooth_certify n=100,000 (noise batch {batch}), {n} examples: "
        f"{cold / n:.3g} s/example cold, {warm / n:.3g} warm",
        flush=True,
    )


def _crown(name: str, f: Any, x: np.ndarray, eps: float) -> None:
    def run() -> Any:
        return certify.crown_bounds(f, x, eps=eps)

    try:
        cold, _ = _timed(run)
        warm, _ = _timed(run)
    except (ValueError, NotImplementedError) as e:
        print(f"{name}: CROWN not available: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return
    n = len(x)
    print(f"{name}: CROWN at eps={eps:.4g}, {n} examples: {cold / n:.3g} s/example cold, {warm / n:.3g} warm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="digits examples")
    parser.add_argument("--zoo-n", type=int, default=16, help="zoo-model examples")
    parser.add_argument("--skip-zoo", action="store_true")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({cpu}, {os.cpu_count()} CPUs)")
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)

    train, test = examples.load_digits(0)
    x, y = test.x[: args.n], test.y[: args.n]
    cnn, mlp = examples.DigitsCNN(), examples.DigitsMLP()
    f_cnn = jaxadv.from_flax(cnn, examples.train_classifier(cnn, train, seed=0))
    f_mlp = jaxadv.from_flax(mlp, examples.train_classifier(mlp, train, seed=0))
    _suite("digits CNN", f_cnn, x, y, 0.1, batch=args.n)
    _smoothing("digits CNN", f_cnn, x[:4], batch=10_000)
    _crown("digits MLP", f_mlp, x, 0.1)
    _crown("digits CNN", f_cnn, x, 0.1)

    if not args.skip_zoo:
        module = zoo.build("wrn-10-1", num_classes=10)
        xz = np.random.default_rng(0).uniform(0.0, 1.0, (args.zoo_n, 32, 32, 3)).astype(np.float32)
        variables = module.init(jax.random.key(0), jnp.asarray(xz[:1]))
        rng = np.random.default_rng(1)
        stats = jax.tree.map(
            lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype), variables["batch_stats"]
        )
        f_zoo = jaxadv.from_flax(module, {"params": variables["params"], "batch_stats": stats})
        yz = np.asarray(jaxadv.predict(f_zoo, xz), np.int32)
        _suite("WRN-10-1 (random weights)", f_zoo, xz, yz, 8 / 255, batch=args.zoo_n)
        _smoothing("WRN-10-1 (random weights)", f_zoo, xz[:1], batch=2_000)
        _crown("WRN-10-1 (random weights)", f_zoo, xz[:4], 8 / 255)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
