"""Black-box attacks on the digits models: query efficiency, transfer, reference parity, time.

Run from the repository root::

    python benchmarks/bench_blackbox.py            # full run (several minutes on 2 cores)
    python benchmarks/bench_blackbox.py --quick    # fewer examples and budgets

Printed, from one run, on the bundled digits test set (CNN seed 0 as the model
under attack, CNN seed 1 as the independent transfer target):

* Square L-inf (eps 0.1) and L2 (eps 0.8): robust accuracy against the query
  budget, mean queries spent;
* SPSA and NES (L-inf, eps 0.15): robust accuracy at 1000 queries;
* HopSkipJump (L2, L-inf): median distance of the adversarial examples against
  the budget;
* transfer rates (FGSM, BIM, PGD, MI-FGSM, DI-MI-FGSM, an ensemble; targeted
  BIM) from CNN seed 0 to CNN seed 1;
* with PyTorch and pyautoattack installed: robust accuracy and wall time of
  AutoAttack's reference Square (PyTorch CPU, one thread) against ours at
  1000 queries on the same weights (the second call of ours, compiled).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxadv
from jaxadv import examples


def _robust(result: Any) -> float:
    return 1.0 - float(np.mean(np.asarray(result.success)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 128 if args.quick else 397
    budgets = (100, 1000) if args.quick else (100, 300, 1000, 3000)
    train, test = examples.load_digits(0)
    model = examples.DigitsCNN()
    variables = examples.train_classifier(model, train, seed=0)
    target_vars = examples.train_classifier(model, train, seed=1)
    f = jaxadv.from_flax(model, variables)
    g = jaxadv.from_flax(model, target_vars)
    x, y = test.x[:n], test.y[:n]
    key = jax.random.key(0)
    print(f"machine: {platform.machine()} {platform.processor()} | jax {jax.__version__} | {n} digits")
    print(f"clean accuracy {examples.accuracy(f, x, y):.3f}")

    for norm, eps in (("linf", 0.1), ("l2", 0.8)):
        for q in budgets:
            r = jaxadv.square(f, x, y, key=key, eps=eps, queries=q, norm=norm, return_info=True)
            print(
                f"square {norm} eps={eps} queries={q}: robust acc {_robust(r):.3f}, "
                f"mean queries {float(np.mean(np.asarray(r.queries))):.0f}"
            )
    for attack in (jaxadv.spsa, jaxadv.nes):
        r = attack(f, x, y, key=key, eps=0.15, queries=1000, num_samples=16, return_info=True)
        print(f"{attack.__name__} linf eps=0.15 queries=1000: robust acc {_robust(r):.3f}")
    for norm in ("l2", "linf"):
        for q in budgets:
            r = jaxadv.hop_skip_jump(f, x[:64], y[:64], key=key, queries=q, norm=norm, return_info=True)
            ok = np.asarray(r.success)
            med = float(np.median(np.asarray(jaxadv.norm_of(r.x_adv - x[:64], norm))[ok]))
            print(f"hop_skip_jump {norm} queries={q}: success {ok.mean():.3f}, median {norm} {med:.3f}")

    eps = 0.2
    crafting = {
        "fgsm": (jaxadv.fgsm, {}),
        "bim": (jaxadv.bim, {"steps": 10, "step_size": eps / 10}),
        "pgd": (jaxadv.pgd, {"steps": 10, "key": key}),
        "mifgsm": (jaxadv.mifgsm, {"steps": 10}),
        "di-mifgsm": (jaxadv.mifgsm, {"steps": 10, "diversity_prob": 0.5, "key": key}),
    }
    for name, (attack, kw) in crafting.items():
        r = jaxadv.transfer(attack, f, g, x, y, eps=eps, **kw)
        print(
            f"transfer {name} eps={eps}: target {float(r.success_rate):.3f}, "
            f"surrogate {float(r.surrogate_success_rate):.3f}"
        )
    mlp = examples.DigitsMLP()
    m = jaxadv.from_flax(mlp, examples.train_classifier(mlp, train, seed=0))
    r = jaxadv.transfer(jaxadv.bim, [f, m], g, x, y, eps=eps, steps=10)
    print(f"transfer bim ensemble(cnn+mlp) eps={eps}: target {float(r.success_rate):.3f}")
    r = jaxadv.transfer(jaxadv.bim, f, g, x, (y + 1) % 10, targeted=True, eps=eps, steps=10)
    print(f"transfer bim targeted eps={eps}: target {float(r.success_rate):.3f}")

    try:
        import torch
        from pyautoattack.square import SquareAttack
    except ImportError:
        print("pyautoattack/torch not installed: reference comparison skipped")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torch_models import TorchDigitsCNN, to_nchw

    torch.set_num_threads(1)
    net = TorchDigitsCNN(variables).eval()
    start = time.perf_counter()
    ref = SquareAttack(net, norm="Linf", n_queries=1000, eps=0.1, seed=0, device="cpu")
    with torch.no_grad():
        x_ref = ref.perturb(to_nchw(x), torch.from_numpy(y).long())
        ref_acc = float((net(x_ref).argmax(1).numpy() == y).mean())
    t_ref = time.perf_counter() - start
    jaxadv.square(f, x, y, key=key, eps=0.1, queries=1000)  # compile
    start = time.perf_counter()
    ours = jaxadv.square(f, x, y, key=jax.random.key(1), eps=0.1, queries=1000, return_info=True)
    t_ours = time.perf_counter() - start
    print(
        f"square linf eps=0.1 1000 queries: robust acc ours {_robust(ours):.3f} vs reference {ref_acc:.3f}; "
        f"time ours {t_ours:.1f}s, reference {t_ref:.1f}s, ratio {t_ref / t_ours:.1f}x"
    )


if __name__ == "__main__":
    main()
