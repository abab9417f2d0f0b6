"""Throughput of the standard evaluation: jaxadv.evaluate vs AutoAttack (pyautoattack).

    python benchmarks/bench_evaluate.py [--n 397] [--eps 0.1]

Both evaluate the digits CNN (weights copied into an equivalent PyTorch model)
at L-inf eps on the first n test digits and print robust accuracy, seconds and
examples per second, and the ratio of the two times. jaxadv is timed after a
warm-up run (compilation excluded); PyTorch runs on one thread (two OpenMP
threads collapse when the cores are shared).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxadv
from jaxadv import examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=397)
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
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
        import pyautoattack
        import torch
    except ImportError:
        print("pyautoattack/torch not installed: skipping the reference (pip install -e '.[crosscheck]')")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torch_models import TorchDigitsCNN, to_nchw

    torch.set_num_threads(1)
    twin = TorchDigitsCNN(variables).eval()
    aa = pyautoattack.AutoAttack(twin, norm="Linf", eps=args.eps, version="standard", device="cpu", seed=0)
    aa.verbose = False
    t0 = time.perf_counter()
    out = aa.run_standard_evaluation(to_nchw(x), torch.from_numpy(y.astype(np.int64)), batch_size=args.n)
    t_ref = time.perf_counter() - t0
    x_ref = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        ref = float(np.mean(twin(x_ref).argmax(1).numpy() == y))
    print(f"AutoAttack standard:   robust {ref:.4f}, {t_ref:.1f} s, {args.n / t_ref:.1f} examples/s")
    print(f"time ratio jaxadv / AutoAttack: {t_ours / t_ref:.2f}x")


if __name__ == "__main__":
    main()
