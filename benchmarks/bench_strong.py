"""Strong white-box attacks: cost against the gradient floor, strength, and APGD
against AutoAttack's reference APGD on the same weights.

Run from the repository root::

    python benchmarks/bench_strong.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_strong.py --quick    # fewer steps and repeats

Printed, from one run, on the digits CNN (trained, 397 held-out digits):

* for MI-FGSM, DI-MI-FGSM, APGD-CE, APGD-T, DeepFool (L2) and CW-L2:
  ``time(attack) / (n * time(one jitted input-gradient))``, where ``n`` is the
  number of input-gradient evaluations the attack performs (an upper bound for
  APGD-T, which skips target classes once every example is fooled; DeepFool
  counts one per Jacobian row), both as a direct call (host loop) and inside
  ``jax.jit`` (``fori_loop``);
* robust accuracy of PGD, APGD-CE, APGD-DLR and APGD-T at L-inf eps 0.1, and
  with PyTorch and pyautoattack installed, AutoAttack's APGD-CE / APGD-T on the
  same weights (time and robust accuracy, CPU, same steps);
* median L2 of successful PGD-L2 (eps 1), DeepFool and CW-L2 perturbations and
  their success rates;
* transfer from the CNN (seed 0) to an independently trained CNN (seed 1):
  success rate on the target model of BIM, MI-FGSM and DI-MI-FGSM examples.

Timings: one warm-up call each, then interleaved repeats; minima are used.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import examples
from jaxadv.gradients import loss_and_grad
from jaxadv.losses import cross_entropy
from jaxadv.models import combine_model, split_model

EPS = 0.1


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    for fn in fns.values():
        jax.block_until_ready(fn())
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def gradient_fn(logits_fn: Any, x: jax.Array, y: jax.Array) -> Callable[[], jax.Array]:
    """One jitted input-gradient of the summed cross-entropy, parameters traced."""
    model, params = split_model(logits_fn)

    @jax.jit
    def grad(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return loss_and_grad(combine_model(model, params), x, y, loss=cross_entropy, targeted=False)[2]

    return lambda: grad(params, x, y)


def repeated(fn: Callable[[], jax.Array], n: int) -> Callable[[], jax.Array]:
    """``n`` calls of ``fn``, waiting for each (the floor an attack of n gradients meets)."""

    def run() -> jax.Array:
        out = fn()
        for _ in range(n - 1):
            out = jax.block_until_ready(fn())
        return out

    return run


def robust(f: Any, x: Any, y: Any) -> float:
    return float(jnp.mean(jaxadv.predict(f, x) == y))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 20 if args.quick else 100
    repeats = 2 if args.quick else 3

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), load {os.getloadavg()[0]:.2f}"
    )
    train, test = examples.load_digits(0)
    cnn = examples.DigitsCNN()
    f = jaxadv.from_flax(cnn, variables := examples.train_classifier(cnn, train, seed=0))
    f_b = jaxadv.from_flax(cnn, examples.train_classifier(cnn, train, seed=1))
    x, y = jnp.asarray(test.x), jnp.asarray(test.y)
    key = jax.random.key(0)
    print(f"digits CNN, {x.shape[0]} test digits, clean accuracy {robust(f, x, y):.3f}")

    # --- cost against the gradient floor ------------------------------------------
    grad = gradient_fn(f, x, y)
    cw_steps, cw_search, df_steps = (20, 3, 10) if args.quick else (100, 9, 50)
    attacks: dict[str, tuple[Callable[..., Any], int]] = {
        "MI-FGSM": (lambda fn, e: jaxadv.mifgsm(fn, x, y, eps=e, steps=steps), steps),
        "DI-MI-FGSM": (
            lambda fn, e: jaxadv.mifgsm(fn, x, y, eps=e, steps=steps, diversity_prob=0.5, key=key),
            steps,
        ),
        "APGD-CE": (lambda fn, e: jaxadv.apgd(fn, x, y, key=key, eps=e, steps=steps), steps + 1),
        "APGD-T": (
            lambda fn, e: jaxadv.apgd_targeted(fn, x, y, key=key, eps=e, steps=steps),
            9 * (steps + 1),
        ),
        "DeepFool": (lambda fn, e: jaxadv.deepfool(fn, x, y, steps=df_steps), 10 * df_steps),
        "CW-L2": (
            lambda fn, e: jaxadv.cw_l2(fn, x, y, steps=cw_steps, binary_search_steps=cw_search),
            cw_steps * cw_search,
        ),
    }
    print(f"\nbatch {x.shape[0]}; floor = n jitted input-gradients, timed interleaved with the attack")
    print(
        f"{'attack':12s} {'n':>6s} {'floor s':>8s} {'direct s':>9s} {'ratio':>6s} {'jit s':>8s} {'ratio':>6s}"
    )
    for name, (run, n) in attacks.items():
        jitted = jax.jit(run)
        times = interleaved(
            {
                "floor": repeated(grad, n),
                "direct": lambda run=run: run(f, EPS),
                "jit": lambda jitted=jitted: jitted(f, jnp.float32(EPS)),
            },
            repeats,
        )
        floor = times["floor"]
        print(
            f"{name:12s} {n:6d} {floor:8.3f} {times['direct']:9.3f} {times['direct'] / floor:6.2f} "
            f"{times['jit']:8.3f} {times['jit'] / floor:6.2f}"
        )

    # --- strength: robust accuracy at L-inf eps ------------------------------------
    print(f"\nrobust accuracy, L-inf eps {EPS}, {steps} steps")
    start = time.perf_counter()
    a_ce = jaxadv.apgd(f, x, y, key=key, eps=EPS, steps=steps)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    a_t = jaxadv.apgd_targeted(f, x, y, key=key, eps=EPS, steps=steps)
    t_ours_t = time.perf_counter() - start
    rows = {
        "PGD": jaxadv.pgd(f, x, y, key=key, eps=EPS, steps=steps),
        "APGD-CE": a_ce,
        "APGD-DLR": jaxadv.apgd(f, x, y, key=key, eps=EPS, steps=steps, loss="dlr"),
        "APGD-T": a_t,
    }
    for name, adv in rows.items():
        print(f"  {name:22s} {robust(f, adv, y):.4f}")
    # Timed again now that they are compiled.
    start = time.perf_counter()
    jax.block_until_ready(jaxadv.apgd(f, x, y, key=key, eps=EPS, steps=steps))
    t_ours = min(t_ours, time.perf_counter() - start)
    start = time.perf_counter()
    jax.block_until_ready(jaxadv.apgd_targeted(f, x, y, key=key, eps=EPS, steps=steps))
    t_ours_t = min(t_ours_t, time.perf_counter() - start)
    try:
        import torch
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        from torch_models import TorchDigitsCNN, max_logit_gap, to_nchw

        torch.set_num_threads(1)  # the two cores are shared; one thread is the fair, stable setting
        twin = TorchDigitsCNN(variables).eval()
        gap = max_logit_gap(twin, f, test.x)
        xt, yt = to_nchw(test.x), torch.from_numpy(test.y.astype(np.int64))
        for name, attack, ours_t, ours_adv in (
            ("APGD-CE", APGDAttack(twin, n_iter=steps, eps=EPS, seed=0, device="cpu"), t_ours, a_ce),
            ("APGD-T", APGDAttack_targeted(twin, n_iter=steps, eps=EPS, seed=0, device="cpu"), t_ours_t, a_t),
        ):
            start = time.perf_counter()
            adv = attack.perturb(xt, yt)
            t_ref = time.perf_counter() - start
            with torch.no_grad():
                acc = float((twin(adv).argmax(1) == yt).float().mean())
            label = "AutoAttack " + name
            print(f"  {label:22s} {acc:.4f}   (ours {robust(f, ours_adv, y):.4f})")
            print(
                f"    time ours {ours_t:.3f} s, reference {t_ref:.3f} s, ratio {ours_t / t_ref:.2f}"
                f" (torch {torch.get_num_threads()} threads, logit gap {gap:.1e})"
            )
    except ImportError as e:
        print(f"  (AutoAttack reference skipped: {e})")

    # --- strength: minimal L2 perturbations ----------------------------------------
    print("\nL2: success rate and median L2 norm of the successful perturbations")
    l2 = {
        "PGD-L2 eps=1": jaxadv.pgd(f, x, y, key=key, eps=1.0, steps=steps, norm="l2"),
        "DeepFool": jaxadv.deepfool(f, x, y, steps=df_steps),
        "CW-L2": jaxadv.cw_l2(f, x, y, steps=cw_steps, binary_search_steps=cw_search),
    }
    for name, adv in l2.items():
        ok = jaxadv.is_adversarial(f, adv, y)
        med = float(jnp.median(jaxadv.norm_of(adv - x, "l2")[ok]))
        print(f"  {name:14s} success {float(jnp.mean(ok)):.3f}  median L2 {med:.3f}")

    # --- transfer ------------------------------------------------------------------
    print("\ntransfer CNN(seed 0) -> CNN(seed 1), L-inf, 10 steps: success on source / on target")
    for eps in (0.1, 0.15):
        tr = {
            "BIM": jaxadv.bim(f, x, y, eps=eps, step_size=eps / 10, steps=10),
            "MI-FGSM": jaxadv.mifgsm(f, x, y, eps=eps, steps=10),
            "DI-MI-FGSM": jaxadv.mifgsm(f, x, y, eps=eps, steps=10, diversity_prob=0.5, key=key),
        }
        for name, adv in tr.items():
            src = float(jnp.mean(jaxadv.is_adversarial(f, adv, y)))
            dst = float(jnp.mean(jaxadv.is_adversarial(f_b, adv, y)))
            print(f"  eps {eps:.2f} {name:12s} {src:.3f} / {dst:.3f}")


if __name__ == "__main__":
    main()
