"""Certified training and certification on the bundled digits set: what the certificates say, and their cost.

Trains the digits MLP from the same seed with:

* normal training, IBP (``jaxadv.training.ibp_loss`` with ``ibp_schedule``) and
  CROWN-IBP (``jaxadv.training.crown_ibp_loss``) at L-inf eps = 0.1 (pixels in
  [0, 1]), then reports on the 397 test digits the clean accuracy, the PGD-20
  accuracy and the verified accuracy by IBP and by CROWN
  (``jaxadv.certify.verified``); the script asserts that every verified example
  also resists PGD (certified <= empirical, example by example);
* Gaussian augmentation (``gaussian_augmentation_loss``) at sigma = 0.25 and 0.5 and
  SmoothAdv (``smoothadv_loss``) at sigma = 0.25, then the certified accuracy of
  the smoothed classifier against the L2 radius (``jaxadv.certify.smooth_certify``,
  n0 = 100, n = 10,000, alpha = 0.001);

and times ``ibp_bounds``, ``crown_bounds`` and ``smooth_certify`` (n = 10,000) on one
batch as ratios to the model's plain jitted forward pass on the same batch.
Writes benchmarks/CERTIFY_RESULTS.md.

    python benchmarks/bench_certify.py            # a few minutes on 2 CPU cores
    python benchmarks/bench_certify.py --quick    # a smoke run (nothing written)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxadv
from jaxadv import certify, examples, training

EPS = 0.1
BATCH = 64
SEED = 0
HIDDEN = (256, 256)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
N0, N, ALPHA = 100, 10_000, 0.001


def _train(
    model: Any,
    data: examples.Split,
    loss_fn: Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array],
    *,
    epochs: int,
    lr: float,
) -> tuple[Any, float]:
    """Adam on ``loss_fn(logits_fn, x, y, key, step)``; returns (logits_fn, seconds, compilation included)."""
    n = len(data.y)
    per_epoch = n // BATCH
    variables = model.init(jax.random.key(SEED), jnp.asarray(data.x[:1]))
    tx = optax.adam(optax.cosine_decay_schedule(lr, epochs * per_epoch, alpha=0.1))
    opt_state = tx.init(variables)

    @jax.jit
    def step(v: Any, opt_state: Any, x: jax.Array, y: jax.Array, key: jax.Array, t: jax.Array) -> Any:
        grads = jax.grad(lambda v: loss_fn(jaxadv.from_flax(model, v), x, y, key, t))(v)
        updates, opt_state = tx.update(grads, opt_state, v)
        return optax.apply_updates(v, updates), opt_state

    rng = np.random.default_rng(SEED)
    key = jax.random.key(SEED + 1)
    start = time.perf_counter()
    t = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for b in range(per_epoch):
            idx = order[b * BATCH : (b + 1) * BATCH]
            key, sub = jax.random.split(key)
            variables, opt_state = step(variables, opt_state, data.x[idx], data.y[idx], sub, jnp.int32(t))
            t += 1
    jax.block_until_ready(variables)
    return jaxadv.from_flax(model, variables), time.perf_counter() - start


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(min, median) seconds of ``fn()`` after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.min(times)), float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs, few test digits, small n")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "CERTIFY_RESULTS.md"))
    args = parser.parse_args()
    quick = args.quick
    load_start = os.getloadavg()
    wall_start = time.perf_counter()

    train, test = examples.load_digits(SEED)
    if quick:
        test = examples.Split(test.x[:64], test.y[:64])
    x_test, y_test = jnp.asarray(test.x), jnp.asarray(test.y)
    model = examples.DigitsMLP(hidden=HIDDEN)
    epochs = 3 if quick else 40
    per_epoch = len(train.y) // BATCH
    warmup, ramp = 2 * per_epoch, (epochs // 2) * per_epoch
    eps_train = 1.1 * EPS  # train slightly above the test radius, as Gowal et al. do

    def clean(f: Any, x: jax.Array, y: jax.Array, key: jax.Array, t: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(f(x), y).mean()

    def ibp(f: Any, x: jax.Array, y: jax.Array, key: jax.Array, t: jax.Array) -> jax.Array:
        eps_t, kappa_t = training.ibp_schedule(t, warmup=warmup, ramp=ramp, eps=eps_train)
        return training.ibp_loss(f, x, y, eps=eps_t, kappa=kappa_t)

    def crown_ibp(f: Any, x: jax.Array, y: jax.Array, key: jax.Array, t: jax.Array) -> jax.Array:
        eps_t, kappa_t = training.ibp_schedule(t, warmup=warmup, ramp=ramp, eps=eps_train, kappa_end=0.0)
        beta_t = 1.0 - eps_t / eps_train  # 1 -> 0 over the ramp (Zhang et al., 2020)
        return training.crown_ibp_loss(f, x, y, eps=eps_t, kappa=kappa_t, crown_weight=beta_t)

    # --- (a) bound propagation --------------------------------------------------------
    bound_rows = []
    trained: dict[str, Any] = {}
    for name, loss_fn in (
        ("normal training", clean),
        (f"IBP (kappa 1 -> 0.5, eps 0 -> {eps_train:.2f})", ibp),
        (f"CROWN-IBP (kappa 1 -> 0, beta 1 -> 0, eps 0 -> {eps_train:.2f})", crown_ibp),
    ):
        f, seconds = _train(model, train, loss_fn, epochs=epochs, lr=1e-3)
        trained[name] = f
        acc = np.asarray(jaxadv.predict(f, x_test) == y_test)
        x_pgd = jaxadv.pgd(f, x_test, y_test, key=jax.random.key(7), eps=EPS, step_size=EPS / 8, steps=20)
        robust = np.asarray(jaxadv.predict(f, x_pgd) == y_test)
        v_ibp = np.asarray(certify.verified(f, x_test, y_test, eps=EPS, method="ibp"))
        v_crown = np.asarray(certify.verified(f, x_test, y_test, eps=EPS, method="crown"))
        # Certified <= empirical, example by example: a verified example cannot be broken.
        assert not np.any(v_ibp & ~robust), "an IBP-verified example fell to PGD"
        assert not np.any(v_crown & ~robust), "a CROWN-verified example fell to PGD"
        assert not np.any(v_ibp & ~v_crown), "CROWN must verify whatever IBP verifies"
        row = (name, acc.mean(), robust.mean(), v_ibp.mean(), v_crown.mean(), seconds)
        bound_rows.append(row)
        print(
            f"{name:55s} clean {row[1]:.3f}  PGD-20 {row[2]:.3f}  verified IBP {row[3]:.3f}"
            f"  CROWN {row[4]:.3f}  ({seconds:.0f} s)"
        )

    # --- (b) randomized smoothing -------------------------------------------------------
    n0, n = (20, 500) if quick else (N0, N)
    smooth_epochs = 3 if quick else 30
    smooth_rows = []
    certify_seconds = 0.0
    for name, sigma, loss_fn2 in (
        (
            "Gaussian augmentation, sigma 0.25",
            0.25,
            lambda f, x, y, key, t: training.gaussian_augmentation_loss(f, x, y, key=key, sigma=0.25),
        ),
        (
            "Gaussian augmentation, sigma 0.5",
            0.5,
            lambda f, x, y, key, t: training.gaussian_augmentation_loss(f, x, y, key=key, sigma=0.5),
        ),
        (
            "SmoothAdv, sigma 0.25 (L2 eps 0.5, 2 steps, m 2)",
            0.25,
            lambda f, x, y, key, t: training.smoothadv_loss(
                f, x, y, key=key, sigma=0.25, eps=0.5, steps=2, m=2
            ),
        ),
    ):
        f, seconds = _train(model, train, loss_fn2, epochs=smooth_epochs, lr=1e-3)
        start = time.perf_counter()
        cert = certify.smooth_certify(
            f, x_test, y_test, key=jax.random.key(11), sigma=sigma, n0=n0, n=n, alpha=ALPHA
        )
        jax.block_until_ready(cert.radius)
        certify_seconds = time.perf_counter() - start
        base = float(np.mean(np.asarray(jaxadv.predict(f, x_test) == y_test)))
        table = [float(np.mean(np.asarray(cert.certified(y_test, r)))) for r in RADII]
        abstain = float(np.mean(np.asarray(cert.prediction) == -1))
        smooth_rows.append((name, base, table, abstain, seconds, certify_seconds))
        print(f"{name:50s} base clean {base:.3f}  certified " + " ".join(f"{a:.3f}" for a in table))

    # --- (c) speed -------------------------------------------------------------------------
    f = trained[bound_rows[1][0]]
    xb = x_test[:100]
    forward = jax.jit(lambda x: f(x))
    repeats = 3 if quick else 7
    t_fwd, t_fwd_med = _timed(lambda: forward(xb), 50)
    speed = [("plain forward (jitted)", t_fwd, t_fwd_med)]
    for label, fn in (
        ("ibp_bounds", lambda: certify.ibp_bounds(f, xb, eps=EPS)),
        (
            'crown_bounds(intermediate="ibp")',
            lambda: certify.crown_bounds(f, xb, eps=EPS, intermediate="ibp"),
        ),
        ('crown_bounds(intermediate="crown")', lambda: certify.crown_bounds(f, xb, eps=EPS)),
        ('verified(method="crown")', lambda: certify.verified(f, xb, y_test[:100], eps=EPS)),
    ):
        speed.append((label, *_timed(fn, repeats)))
    n_speed = 500 if quick else N
    smooth_time = _timed(
        lambda: (
            certify.smooth_certify(
                f, xb, key=jax.random.key(1), sigma=0.25, n0=N0, n=n_speed, alpha=ALPHA
            ).radius
        ),
        1,
    )
    speed.append((f"smooth_certify(n0={N0}, n={n_speed})", *smooth_time))
    for label, t_min, t_med in speed:
        print(f"{label:40s} {t_min * 1e3:10.2f} ms (median {t_med * 1e3:.2f})  x{t_min / t_fwd:,.1f} forward")

    load_end = os.getloadavg()
    total = time.perf_counter() - wall_start
    device = jax.devices()[0].platform
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {device}, jax {jax.__version__}"
    date = datetime.date.today().isoformat()
    lines = [
        "# Certified training and certification on the digits set",
        "",
        "Produced by `python benchmarks/bench_certify.py` (one run; figures move a little",
        f"with the machine and its load). Machine: {machine}. Date: {date}. Load average",
        f"(1/5/15 min) {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f} at the start and"
        f" {load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} at the end (the machine is shared: times",
        f"are indicative). Whole run: {total:.0f} s.",
        "",
        f"Model: `DigitsMLP(hidden={HIDDEN})`. Data: the bundled digits, 1400 training images",
        f"(batch {BATCH}, Adam with a cosine decay from 1e-3, seed {SEED}), evaluation on the",
        f"{len(test.y)} test digits.",
        "",
        f"## Verified accuracy at L-inf eps = {EPS} (pixels in [0, 1])",
        "",
        f"{epochs} epochs; IBP and CROWN-IBP: {warmup // per_epoch} epochs of clean training, then",
        f"`ibp_schedule` ramps eps from 0 to {eps_train:.2f} (1.1 x the test radius) over",
        f"{ramp // per_epoch} epochs. PGD-20: `jaxadv.pgd`, 20 steps of eps/8 from a random start.",
        'Verified: `jaxadv.certify.verified(..., method="ibp")` and `method="crown"` (CROWN',
        "with CROWN intermediate bounds). The script asserts, example by example, that every",
        "verified example also resists PGD-20 (certified <= empirical).",
        "",
        "| training | clean | PGD-20 | verified (IBP) | verified (CROWN) | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, acc, rob, vi, vc, sec in bound_rows:
        lines.append(f"| {name} | {acc:.3f} | {rob:.3f} | {vi:.3f} | {vc:.3f} | {sec:.0f} |")
    lines += [
        "",
        "## Randomized smoothing: certified accuracy against the L2 radius",
        "",
        f"{smooth_epochs} epochs of training with the loss named. `smooth_certify` with n0 = {n0},",
        f"n = {n:,}, alpha = {ALPHA}, at the training sigma, on all {len(test.y)} test digits; certified",
        "accuracy at radius r: the fraction classified correctly by the smoothed classifier with a",
        "certified radius >= r (abstentions count as wrong). With n = 10,000 and alpha = 0.001 the",
        "largest radius that can be certified is about 3.2 sigma. 'base clean': the base",
        "classifier's accuracy on clean inputs.",
        "",
        "| training | base clean | " + " | ".join(f"r = {r}" for r in RADII) + " | abstain |",
        "|---|---|" + "---|" * len(RADII) + "---|",
    ]
    for name, base, table, abstain, _, _ in smooth_rows:
        lines.append(
            f"| {name} | {base:.3f} | " + " | ".join(f"{a:.3f}" for a in table) + f" | {abstain:.3f} |"
        )
    lines += [
        "",
        "Train / certify seconds: "
        + "; ".join(f"{name}: {tr:.0f} / {ce:.0f}" for name, _, _, _, tr, ce in smooth_rows)
        + ".",
        "",
        "## Speed: certification against one forward pass",
        "",
        "One batch of 100 test digits, the IBP-trained model. Each call is warmed up (compiled)",
        "first; then minimum and median of repeated calls (forward: 50, bounds: "
        f"{repeats}, `smooth_certify`: 1). Ratio: minimum over the forward pass's minimum.",
        "",
        "| computation | time (ms) | median (ms) | x forward |",
        "|---|---|---|---|",
    ]
    for label, t_min, t_med in speed:
        lines.append(f"| `{label}` | {t_min * 1e3:.2f} | {t_med * 1e3:.2f} | {t_min / t_fwd:,.1f} |")
    per_draw = smooth_time[0] / t_fwd / (N0 + n_speed)
    lines += [
        "",
        f"`smooth_certify` per noise draw: {per_draw:.2f} x forward (its ratio over n0 + n). The",
        "bound functions are called as a user calls them, eagerly: their time includes the input",
        "checks of `jaxadv.attacks.base.prepare` (host round trips), a large share at this tiny model size.",
        "",
    ]
    if quick:
        print("\n".join(lines))
    else:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
