"""Minimal-norm and sparse attacks against their reference implementations, side by side.

Run from the repository root::

    python benchmarks/bench_minimal_norm.py            # about 3 minutes on 2 shared cores
    python benchmarks/bench_minimal_norm.py --n 200    # more examples

On the digits CNN (``jaxadv.examples.DigitsCNN``, seed 0) and its PyTorch twin
(``tests/torch_models.py``, logits checked to agree within 1e-4), the same
correctly classified test digits (of the first ``--n``), each attack and its
reference with the same number of steps and their shared hyperparameters:

* FAB L-inf and FAB-T L-inf (3 target classes): AutoAttack's ``FABAttack_PT``
  (pyautoattack), minimal-norm mode (ours ``eps=None``; the reference with
  ``eps=1``, which bounds nothing in ``[0, 1]``), one run from ``x``. For FAB-T
  the reference runs ``attack_single_run`` once per target class and keeps the
  smallest result per example, as ours does (its ``perturb`` would stop at the
  first target that succeeds: less work, larger norms). Ours adds its final
  10-halving search of the segment (``search_steps=10``, the default).
* FMN L2, L-inf and L0: Foolbox 3.3.4's ``L2FMNAttack``, ``LInfFMNAttack``,
  ``L0FMNAttack``, default hyperparameters on both sides.
* EAD-L1: torchattacks' ``EADL1`` (``abort_early=False``; ours has no early
  abort), ``decision_rule="l1"``.
* JSMA: torchattacks' ``JSMA``, targeted, ``theta=1``, ``gamma=0.25``, targets
  ``(y + 1 + i mod 9) mod 10``.
* Sparse-RS L0: ours alone; the paper's code is not an installable package.

Printed per attack: our warm time (best of ``--repeats`` calls after the
first), our cold time (the first call of the process for that attack and shape,
compilation included), the reference's time (best of 2), the ratio
reference / ours (warm), the success rates, and the median norm of the
perturbations over the examples both sides fool (L0: changed pixels; the
digits have one channel). Success is judged on the JAX model for both sides.
PyTorch runs with one thread; JAX uses its default (all cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

import jaxadv
from jaxadv import examples
from jaxadv.attacks.ead import ead
from jaxadv.attacks.fab import fab, fab_targeted
from jaxadv.attacks.fmn import fmn
from jaxadv.attacks.jsma import jsma
from jaxadv.attacks.sparse_rs import sparse_rs

FAB_STEPS, FAB_TARGETS = 100, 3
FMN_STEPS = 100
EAD = dict(beta=1e-3, learning_rate=1e-2, steps=100, binary_search_steps=9, initial_const=1e-3)
JSMA_GAMMA = 0.25
RS_K, RS_QUERIES = 4, 1000


def time_ours(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """``(output, cold s, warm s)``: the first call, then the best of ``repeats`` more."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    cold = time.perf_counter() - start
    warm = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        warm = min(warm, time.perf_counter() - start)
    return out, cold, warm


def time_ref(fn: Callable[[], Any], repeats: int = 2) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def size(adv: Any, x: np.ndarray, norm: str) -> np.ndarray:
    d = (np.asarray(adv, np.float32) - x).reshape(len(x), -1)
    if norm == "l0":
        return np.sum(d != 0, axis=1).astype(float)
    if norm == "l1":
        return np.abs(d).sum(1)
    if norm == "l2":
        return np.sqrt((d**2).sum(1))
    return np.abs(d).max(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100, help="first n test digits (correct ones attacked)")
    parser.add_argument("--repeats", type=int, default=2, help="warm calls of ours after the first")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from torch_models import TorchDigitsCNN, max_logit_gap, to_nchw, to_nhwc

    torch.set_num_threads(1)  # the cores are shared; one thread is the stable setting
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} thread), load {os.getloadavg()[0]:.2f}"
    )
    train, test = examples.load_digits(0)
    cnn = examples.DigitsCNN()
    variables = examples.train_classifier(cnn, train, seed=0)
    f = jaxadv.from_flax(cnn, variables)
    twin = TorchDigitsCNN(variables).eval()
    x, y = test.x[: args.n], test.y[: args.n]
    keep = np.asarray(jaxadv.predict(f, x)) == y
    x, y = np.asarray(x[keep], np.float32), y[keep].astype(np.int32)
    gap = max_logit_gap(twin, f, x)
    assert gap < 1e-4, gap
    xt, yt = to_nchw(x), torch.from_numpy(y.astype(np.int64))
    targets = ((y + 1 + np.arange(len(y)) % 9) % 10).astype(np.int32)
    key = jax.random.key(0)
    print(f"digits CNN, {len(x)} correctly classified of the first {args.n} test digits, logit gap {gap:.1e}")

    rows: list[tuple[str, str, float, float, float | None, float, float | None, float, float | None]] = []

    def record(
        name: str,
        settings: str,
        norm: str,
        ours: tuple[Any, float, float],
        ref: tuple[Any, float] | None,
        targeted: bool = False,
    ) -> None:
        labels = targets if targeted else y
        adv, cold, warm = ours
        ok = np.asarray(jaxadv.is_adversarial(f, adv, labels, targeted=targeted))
        if ref is None:
            med = float(np.median(size(adv, x, norm)[ok])) if ok.any() else float("nan")
            rows.append((name, settings, warm, cold, None, float(ok.mean()), None, med, None))
        else:
            ref_adv, t_ref = ref
            ok_ref = np.asarray(jaxadv.is_adversarial(f, ref_adv, labels, targeted=targeted))
            both = ok & ok_ref
            med = float(np.median(size(adv, x, norm)[both])) if both.any() else float("nan")
            med_ref = float(np.median(size(ref_adv, x, norm)[both])) if both.any() else float("nan")
            rows.append(
                (name, settings, warm, cold, t_ref, float(ok.mean()), float(ok_ref.mean()), med, med_ref)
            )
        print(f"  done {name} ({time.strftime('%H:%M:%S')})", flush=True)

    # --- FAB, FAB-T (pyautoattack) ----------------------------------------------------
    from pyautoattack.fab_pt import FABAttack_PT

    def fab_ref(targeted: bool) -> np.ndarray:
        attack = FABAttack_PT(
            twin, norm="Linf", n_restarts=1, n_iter=FAB_STEPS, eps=1.0, seed=0, targeted=targeted,
            device="cpu", n_target_classes=FAB_TARGETS,
        )  # fmt: skip
        with torch.no_grad():
            if not targeted:
                return to_nhwc(attack.perturb(xt, yt))
            best, best_norm = xt.clone(), torch.full((len(y),), float("inf"))
            for k in range(2, FAB_TARGETS + 2):
                attack.target_class = k
                adv = attack.attack_single_run(xt, yt, use_rand_start=False, is_targeted=True)
                fooled = twin(adv).argmax(1) != yt
                d = torch.where(fooled, (adv - xt).abs().reshape(len(y), -1).max(1)[0], float("inf"))
                better = d < best_norm
                best[better], best_norm = adv[better], torch.minimum(best_norm, d)
            return to_nhwc(best)

    fab_settings = f"{FAB_STEPS} steps, 1 run, eps=None"
    record(
        "FAB L-inf",
        fab_settings,
        "linf",
        time_ours(lambda: fab(f, x, y, key=key, steps=FAB_STEPS, norm="linf"), args.repeats),
        time_ref(lambda: fab_ref(False)),
    )
    record(
        "FAB-T L-inf",
        f"{fab_settings}, {FAB_TARGETS} targets",
        "linf",
        time_ours(
            lambda: fab_targeted(
                f, x, y, key=key, steps=FAB_STEPS, norm="linf", num_target_classes=FAB_TARGETS
            ),
            args.repeats,
        ),
        time_ref(lambda: fab_ref(True)),
    )

    # --- FMN (Foolbox) ----------------------------------------------------------------
    import foolbox as fb

    fmodel = fb.PyTorchModel(twin, bounds=(0, 1))
    for norm, cls, label in (
        ("l2", fb.attacks.L2FMNAttack, "L2"),
        ("linf", fb.attacks.LInfFMNAttack, "L-inf"),
        ("l0", fb.attacks.L0FMNAttack, "L0"),
    ):
        attack = cls(steps=FMN_STEPS)

        def ours_fmn(norm: Any = norm) -> Any:
            return fmn(f, x, y, norm=norm, steps=FMN_STEPS)

        def ref_fmn(attack: Any = attack) -> np.ndarray:
            return to_nhwc(attack(fmodel, xt, yt, epsilons=None)[0])

        record(
            f"FMN {label}",
            f"{FMN_STEPS} steps, defaults",
            norm,
            time_ours(ours_fmn, args.repeats),
            time_ref(ref_fmn),
        )

    # --- EAD-L1, JSMA (torchattacks) --------------------------------------------------
    import torchattacks

    ead_ref = torchattacks.EADL1(
        twin, kappa=0.0, lr=EAD["learning_rate"], binary_search_steps=EAD["binary_search_steps"],
        max_iterations=EAD["steps"], abort_early=False, initial_const=EAD["initial_const"], beta=EAD["beta"],
    )  # fmt: skip
    record(
        "EAD-L1",
        f"{EAD['binary_search_steps']}x{EAD['steps']} steps, beta {EAD['beta']:g}",
        "l1",
        time_ours(lambda: ead(f, x, y, decision_rule="l1", **EAD), args.repeats),  # type: ignore[arg-type]
        time_ref(lambda: to_nhwc(ead_ref(xt, yt))),
    )
    jsma_ref = torchattacks.JSMA(twin, theta=1.0, gamma=JSMA_GAMMA)
    jsma_ref.set_mode_targeted_by_label(quiet=True)
    tt = torch.from_numpy(targets.astype(np.int64))
    record(
        "JSMA",
        f"targeted, theta 1, gamma {JSMA_GAMMA}",
        "l0",
        time_ours(lambda: jsma(f, x, targets, targeted=True, theta=1.0, gamma=JSMA_GAMMA), args.repeats),
        time_ref(lambda: to_nhwc(jsma_ref(xt, tt))),
        targeted=True,
    )

    # --- Sparse-RS (no installable reference) -----------------------------------------
    record(
        "Sparse-RS L0",
        f"k={RS_K} pixels, {RS_QUERIES} queries",
        "l0",
        time_ours(lambda: sparse_rs(f, x, y, key=key, k=RS_K, threat="l0", queries=RS_QUERIES), args.repeats),
        None,
    )

    norms = {"FAB": "L-inf", "FMN L2": "L2", "FMN L-inf": "L-inf", "FMN L0": "L0", "EAD": "L1"}
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")
    print(
        "\n| attack | settings | ours warm s | ours cold s | reference s | ref / ours (warm) "
        "| success ours / ref | median norm ours / ref |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, settings, warm, cold, t_ref, ok, ok_ref, med, med_ref in rows:
        kind = next((v for k, v in norms.items() if name.startswith(k)), "L0")
        if t_ref is None:
            ref_s, ratio, succ, med_s = "n/a", "n/a", f"{ok:.3f} / n/a", f"{med:.4g} ({kind}) / n/a"
        else:
            ref_s, ratio = f"{t_ref:.3f}", f"{t_ref / warm:.2f}"
            succ, med_s = f"{ok:.3f} / {ok_ref:.3f}", f"{med:.4g} / {med_ref:.4g} ({kind})"
        print(f"| {name} | {settings} | {warm:.3f} | {cold:.3f} | {ref_s} | {ratio} | {succ} | {med_s} |")
    print(
        "\nmedian norms over the examples both sides fool (Sparse-RS: over its own successes); "
        f"references: FAB pyautoattack FABAttack_PT, FMN foolbox {fb.__version__}, EAD/JSMA torchattacks "
        f"{torchattacks.__version__}; Sparse-RS has no installable reference"
    )


if __name__ == "__main__":
    main()
