"""Throughput of the standard evaluation: jaxadv.evaluate vs AutoAttack (pyautoattack).

    python benchmarks/bench_evaluate.py [--n 397] [--eps 0.1]
    python benchmarks/bench_evaluate.py --mnist-scale [--n 397] [--eps 0.15]

Both evaluate the digits CNN (weights copied into an equivalent PyTorch model)
at L-inf eps on the first n test digits and print robust accuracy, seconds and
examples per second, and the ratio of the two times. jaxadv is timed after a
warm-up run (compilation excluded); PyTorch runs on one thread (two OpenMP
threads collapse when the cores are shared).

``--mnist-scale``: the same comparison at MNIST's scale, attack by attack. The
digits are upsampled to 28x28x1 (bilinear), the CNN (``DigitsCNN``: two
strided 3x3 convolutions, 32 and 64 channels, and a linear head on 7x7x64) is
trained from scratch with a few clean epochs then a few epochs of PGD-AT
(7 steps; the radius grows to ``eps`` over the first half), and both libraries
run their standard suite on the test digits. ``eps`` is 0.15 by default, where
such a model is about 50% robust, as the issue's MNIST model was at 0.3: on
these upsampled 8x8 digits a radius of 0.3 leaves about 8% robust after the
same training (PGD-20), so most examples would leave the suite after APGD-CE.
Printed per attack: jaxadv's seconds in its first call (compilation included)
and in a second call, AutoAttack's seconds (its attacks' ``perturb`` timed one
by one) and the examples each attack was run on. AutoAttack's standard version
runs FAB-T, which jaxadv's does not, so the totals are compared with and
without FAB-T's time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=397)
    parser.add_argument("--eps", type=float, default=None, help="default 0.1; 0.15 with --mnist-scale")
    parser.add_argument("--mnist-scale", action="store_true", help="28x28x1 CNN trained with PGD-AT")
    parser.add_argument("--clean-epochs", type=int, default=5, help="with --mnist-scale")
    parser.add_argument("--adversarial-epochs", type=int, default=10, help="with --mnist-scale")
    parser.add_argument("--batch-size", type=int, default=256, help="jaxadv's, with --mnist-scale")
    args = parser.parse_args()
    if args.mnist_scale:
        mnist_scale(args)
        return
    args.eps = 0.1 if args.eps is None else args.eps
    train, test = examples.load_digits(0)
    model = examples.DigitsCNN()
    variables = examples.train_classifier(model, train, seed=0)
    logits_fn = jaxadv.from_flax(model, variables)
    x, y = test.x[: args.n], test.y[: args.n]

    def ours() -> float:
        res = jaxadv.evaluate(
            logits_fn,
            x,
            y,
            eps=args.eps,
            suite="standard",
            key=jax.random.key(0),
            progress=False,
            checks=False,
        )
        return res.robust_accuracy

    ours()  # compile
    t0 = time.perf_counter()
    acc = ours()
    t_ours = time.perf_counter() - t0
    print(f"jaxadv standard suite: robust {acc:.4f}, {t_ours:.1f} s, {args.n / t_ours:.1f} examples/s")

    try:
        import pyautoattack  # noqa: F401  (only checks that the reference is installed)
        import torch
    except ImportError:
        print("pyautoattack/torch not installed: skipping the reference (pip install -e '.[crosscheck]')")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torch_models import TorchDigitsCNN

    torch.set_num_threads(1)
    twin = TorchDigitsCNN(variables).eval()
    t_ref, ref, _, _ = autoattack_run(twin, x, y, eps=args.eps, batch_size=args.n)
    print(f"AutoAttack standard:   robust {ref:.4f}, {t_ref:.1f} s, {args.n / t_ref:.1f} examples/s")
    print(f"time ratio jaxadv / AutoAttack: {t_ours / t_ref:.2f}x")


def upsample(x: np.ndarray, size: int) -> np.ndarray:
    """``[n, 8, 8, 1]`` digits -> ``[n, size, size, 1]`` (bilinear), pixels kept in [0, 1]."""
    out = jax.image.resize(jnp.asarray(x), (len(x), size, size, x.shape[-1]), "bilinear")
    return np.clip(np.asarray(out), 0.0, 1.0)


def _timed(attack: Any, name: str, seconds: dict[str, float], sizes: dict[str, int]) -> None:
    """Wrap ``attack.perturb`` to add its wall time and batch size to ``seconds[name]``, ``sizes[name]``."""
    perturb = attack.perturb

    def run(x: Any, y: Any, *a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        out = perturb(x, y, *a, **k)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        sizes[name] = sizes.get(name, 0) + len(x)
        return out

    attack.perturb = run


def autoattack_run(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    version: str = "standard",
    batch_size: int | None = None,
    timed: dict[str, str] | None = None,
) -> tuple[float, float, dict[str, float], dict[str, int]]:
    """AutoAttack's ``version`` at L-inf ``eps`` on the PyTorch ``model`` over the NHWC
    batch ``x`` (labels ``y``), in batches of ``batch_size`` (default: one batch).

    ``timed`` maps a label to an attribute of the ``AutoAttack`` object (``apgd``,
    ``apgd_targeted``, ``fab``, ``square``) whose ``perturb`` calls are timed.
    Returns the wall time, the robust accuracy of the returned batch re-predicted
    by ``model``, and per label the seconds and the examples passed."""
    import pyautoattack
    import torch
    from torch_models import to_nchw

    aa = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version=version, device="cpu", seed=0)
    aa.verbose = False
    seconds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for label, attr in (timed or {}).items():
        _timed(getattr(aa, attr), label, seconds, sizes)
    start = time.perf_counter()
    out = aa.run_standard_evaluation(
        to_nchw(x), torch.from_numpy(y.astype(np.int64)), batch_size=batch_size or len(y)
    )
    elapsed = time.perf_counter() - start
    x_ref = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        accuracy = float(np.mean(model(x_ref).argmax(1).numpy() == y))
    return elapsed, accuracy, seconds, sizes


def _padded(n: int, batch_size: int) -> int:
    """Rows ``jaxadv.evaluate`` feeds an attack for ``n`` examples of a batch (0 for none)."""
    if n == 0 or n >= batch_size:
        return n
    return min(max(8, 1 << (n - 1).bit_length()), batch_size)


def mnist_scale(args: argparse.Namespace) -> None:
    import pyautoattack  # noqa: F401  (fail before any training when the reference is missing)
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bench_mixed_precision import train as train_model
    from torch_models import TorchDigitsCNN, max_logit_gap

    eps = 0.15 if args.eps is None else args.eps
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, torch {torch.__version__} (1 thread); load average {load}"
    )
    train, test = examples.load_digits(0)
    train = examples.Split(upsample(train.x, 28), train.y)
    x, y = upsample(test.x[: args.n], 28), test.y[: args.n]
    model = examples.DigitsCNN()
    start = time.perf_counter()
    variables = train_model(
        model,
        train,
        clean_epochs=args.clean_epochs,
        adversarial_epochs=args.adversarial_epochs,
        eps=eps,
        attack_steps=7,
        attack_step_size=2.5 * eps / 7,
        eps_warmup=args.adversarial_epochs // 2,
    )
    logits_fn = jaxadv.from_flax(model, variables)
    print(
        f"DigitsCNN on 28x28x1 digits: {args.clean_epochs} clean + {args.adversarial_epochs} PGD-7 epochs "
        f"(eps {eps:g}) in {time.perf_counter() - start:.0f} s; clean test accuracy "
        f"{examples.accuracy(logits_fn, x, y):.1%} on {len(y)} digits"
    )
    torch.set_num_threads(1)
    twin = TorchDigitsCNN(variables, input_size=28).eval()
    gap = max_logit_gap(twin, logits_fn, x)
    assert gap < 1e-4, f"the PyTorch twin's logits differ by {gap}"

    results = []
    for call in ("first call", "second call"):
        start = time.perf_counter()
        res = jaxadv.evaluate(
            logits_fn,
            x,
            y,
            eps=eps,
            suite="standard",
            key=jax.random.key(0),
            batch_size=args.batch_size,
            progress=False,
            checks=False,
        )
        results.append((time.perf_counter() - start, res))
        print(f"jaxadv {call}: {results[-1][0]:.1f} s, robust {res.robust_accuracy:.2%}", flush=True)
    (t_cold, cold), (t_warm, warm) = results

    timed = {"apgd-ce": "apgd", "apgd-t": "apgd_targeted", "fab-t": "fab", "square": "square"}
    t_aa, ref, aa_seconds, aa_sizes = autoattack_run(twin, x, y, eps=eps, timed=timed)

    # Examples each of jaxadv's attacks ran on: the correct ones not fooled by an earlier attack;
    # and the rows it computed: evaluate pads them, per batch, to a power of two (at least 8, at
    # most the batch size; a full batch stays as it is).
    ours_sizes, ours_rows = {}, {}
    for i, name in enumerate(warm.attacks):
        left = (warm.fooled_by == -1) | (warm.fooled_by >= i)
        ours_sizes[name] = int(np.sum(left))
        ours_rows[name] = sum(
            _padded(int(np.sum(left[b : b + args.batch_size])), args.batch_size)
            for b in range(0, len(y), args.batch_size)
        )
    print(
        f"\nL-inf eps {eps:g}, {len(y)} digits at 28x28x1, standard suites "
        f"(jaxadv batch size {args.batch_size}, AutoAttack {len(y)})"
    )
    print(
        f"  {'attack':10s} {'jaxadv 1st s':>12s} {'jaxadv 2nd s':>12s} {'AutoAttack s':>12s} "
        f"{'2nd / AA':>9s} {'examples (ours / AA)':>21s} {'rows ours':>10s}"
    )
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        c, w = cold.seconds.get(name, float("nan")), warm.seconds.get(name, float("nan"))
        r = aa_seconds.get(name, float("nan"))
        print(
            f"  {name:10s} {c:12.1f} {w:12.1f} {r:12.1f} {w / r:8.2f}x "
            f"{ours_sizes.get(name, 0):>10d} / {aa_sizes.get(name, 0):<8d} {ours_rows.get(name, 0):>10d}"
        )
    without_fab = t_aa - aa_seconds.get("fab-t", 0.0)
    print(f"  {'total':10s} {t_cold:12.1f} {t_warm:12.1f} {t_aa:12.1f} {t_warm / t_aa:8.2f}x")
    print(
        f"robust accuracy: jaxadv {warm.robust_accuracy:.2%}, AutoAttack {ref:.2%}\n"
        f"time ratio jaxadv / AutoAttack: {t_cold / t_aa:.2f}x with compilation, {t_warm / t_aa:.2f}x warm; "
        f"without FAB-T's {aa_seconds.get('fab-t', 0.0):.1f} s: {t_cold / without_fab:.2f}x and "
        f"{t_warm / without_fab:.2f}x"
    )


if __name__ == "__main__":
    main()
