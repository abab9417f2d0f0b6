"""AutoAttack's three versions: jaxadv.evaluate's suites against pyautoattack, timed.

    python benchmarks/bench_suites.py [--n 200] [--eps 0.1] [--suites standard plus rand]
    python benchmarks/bench_suites.py --mnist-scale [--n 200] [--eps 0.15]

The digits CNN (trained as in :mod:`jaxadv.examples`, seed 0), or with
``--mnist-scale`` the 28x28x1 CNN of ``bench_evaluate.py --mnist-scale``
(upsampled digits, clean then PGD-AT training), is copied into its PyTorch twin
(``tests/torch_models.py``; logits checked to agree within 1e-4). For each suite
on the same first ``n`` test digits at L-inf ``eps``:

* jaxadv: ``evaluate(suite=...)`` twice, the first call cold (compilation
  included), the second warm; the seconds per attack are the warm call's
  ``EvaluationResult.seconds``.
* AutoAttack: ``AutoAttack(version=...).run_standard_evaluation`` once on one
  batch of all ``n``, PyTorch on one thread (two OpenMP threads collapse when
  the cores are shared); its seconds per attack object are its ``perturb``
  calls timed one by one (``apgd`` runs both APGD-CE and APGD-DLR, ``fab``
  both FAB and FAB-T where the version has both).

Printed: robust accuracy ours / theirs, wall seconds, and the ratios of jaxadv's
cold and warm times to AutoAttack's.
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
import numpy as np

import jaxadv
from jaxadv import examples

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

#: AutoAttack's attack objects, by the name printed.
AA_ATTACKS = {"apgd": "apgd", "apgd-t": "apgd_targeted", "fab": "fab", "square": "square"}


def noisy_twin(model: Any, sigma: float) -> Any:
    """``model(x + sigma * N(0, 1))`` as a PyTorch module, a fresh draw per call."""
    import torch

    class NoisyTwin(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x + sigma * torch.randn_like(x))

    return NoisyTwin().eval()


def model_and_data(args: argparse.Namespace) -> tuple[Any, Any, np.ndarray, np.ndarray, str]:
    """``(logits_fn, variables, x, y, description)`` of the model to evaluate."""
    train, test = examples.load_digits(0)
    model = examples.DigitsCNN()
    if not args.mnist_scale:
        variables = examples.train_classifier(model, train, seed=0)
        return jaxadv.from_flax(model, variables), variables, test.x[: args.n], test.y[: args.n], "digits CNN"
    from bench_evaluate import upsample
    from bench_mixed_precision import train as train_model

    train = examples.Split(upsample(train.x, 28), train.y)
    variables = train_model(
        model,
        train,
        clean_epochs=5,
        adversarial_epochs=10,
        eps=args.eps,
        attack_steps=7,
        attack_step_size=2.5 * args.eps / 7,
        eps_warmup=5,
    )
    x = upsample(test.x[: args.n], 28)
    return jaxadv.from_flax(model, variables), variables, x, test.y[: args.n], "28x28x1 CNN (PGD-AT)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=None, help="default 0.1; 0.15 with --mnist-scale")
    parser.add_argument("--suites", nargs="+", default=["standard", "plus", "rand"])
    parser.add_argument("--mnist-scale", action="store_true", help="the 28x28x1 CNN of bench_evaluate.py")
    parser.add_argument(
        "--noise", type=float, default=0.05, help="rand also on the model with this input noise"
    )
    args = parser.parse_args()
    args.eps = (0.15 if args.mnist_scale else 0.1) if args.eps is None else args.eps

    import pyautoattack  # noqa: F401  (fail before any training when the reference is missing)
    import torch
    from bench_evaluate import autoattack_run
    from torch_models import TorchDigitsCNN, max_logit_gap

    torch.set_num_threads(1)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, torch {torch.__version__} (1 thread); load average {load}"
    )
    logits_fn, variables, x, y, name = model_and_data(args)
    twin = TorchDigitsCNN(variables, input_size=x.shape[1]).eval()
    gap = max_logit_gap(twin, logits_fn, x)
    assert gap < 1e-4, f"the PyTorch twin's logits differ by {gap}"
    print(
        f"{name}: {len(y)} test digits, clean accuracy {examples.accuracy(logits_fn, x, y):.2%}, "
        f"L-inf eps {args.eps:g}"
    )

    runs: list[tuple[str, str, Any, Any, dict[str, Any]]] = [(s, s, logits_fn, twin, {}) for s in args.suites]
    if "rand" in args.suites and args.noise > 0:
        # A randomised model: Gaussian noise on the input, a fresh draw per call. On the
        # deterministic model the suite's 20 equal draws may be computed once (XLA can hoist
        # what does not depend on the draw), so this row times the 20 draws themselves.
        sigma = args.noise

        def noisy(x: Any, key: Any) -> Any:
            return logits_fn(x + sigma * jax.random.normal(key, x.shape, x.dtype))

        runs.append((f"rand, noise {sigma:g}", "rand", noisy, noisy_twin(twin, sigma), {"randomized": True}))

    rows = []
    for label_suite, suite, fn, reference_model, extra in runs:
        times, results = [], []
        for _ in ("cold", "warm"):
            start = time.perf_counter()
            res = jaxadv.evaluate(
                fn,
                x,
                y,
                eps=args.eps,
                suite=suite,
                key=jax.random.key(0),
                progress=False,
                checks=False,
                **extra,
            )
            times.append(time.perf_counter() - start)
            results.append(res)
        warm = results[1]
        t_aa, ref, aa_seconds, aa_sizes = autoattack_run(
            reference_model, x, y, eps=args.eps, version=suite, timed=AA_ATTACKS
        )
        rows.append(
            (label_suite, results[0].robust_accuracy, warm.robust_accuracy, ref, times[0], times[1], t_aa)
        )
        after = warm.robust_accuracy_after()
        print(f"\n{label_suite}: load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print("  jaxadv, warm call, per attack (seconds, robust accuracy after it):")
        for attack in warm.attacks:
            print(f"    {attack:16s} {warm.seconds.get(attack, 0.0):7.1f} s  {after[attack]:.2%}")
        print("  AutoAttack, per attack object (seconds, examples passed):")
        for label in AA_ATTACKS:
            if label in aa_seconds:
                print(f"    {label:16s} {aa_seconds[label]:7.1f} s  {aa_sizes[label]}")
        cold = ", ".join(f"{k} {v:.1f}" for k, v in results[0].seconds.items())
        print(f"  jaxadv, cold call, seconds per attack: {cold}")
        sys.stdout.flush()

    print(f"\n{name}, {len(y)} digits, L-inf eps {args.eps:g}")
    print(
        f"  {'suite':17s} {'robust ours':>11s} {'theirs':>7s} {'ours cold s':>11s} {'ours warm s':>11s} "
        f"{'AA s':>7s} {'cold/AA':>8s} {'warm/AA':>8s}"
    )
    for suite, acc_cold, acc, ref, t_cold, t_warm, t_aa in rows:
        same = "" if acc_cold == acc else f" (cold call {acc_cold:.2%})"
        print(
            f"  {suite:17s} {acc:11.2%} {ref:7.2%} {t_cold:11.1f} {t_warm:11.1f} {t_aa:7.1f} "
            f"{t_cold / t_aa:7.2f}x {t_warm / t_aa:7.2f}x{same}"
        )


if __name__ == "__main__":
    main()
