"""Old commit against the working tree, side by side: did a refactor cost speed or change results?

Run from the repository root::

    python benchmarks/bench_refactor.py --old 37a76ae     # any revision

The old revision is checked out into a temporary ``git worktree``; each side
runs in its own subprocess (two versions of one package cannot share a
process), alternately, ``--rounds`` times, so that load from other processes
hits both alike. Each worker times, on the digits CNN of :mod:`jaxadv.examples`
(128 test digits, direct calls, warmed up): one jitted input-gradient (the
floor), then every attack of the library at a small budget: FGSM, BIM, PGD in
L-inf, L2 and L1, MI-FGSM, APGD-CE (L-inf, L1), APGD-T, FAB, FMN, DeepFool, CW,
EAD, JSMA, and the score- and decision-based Square, Sparse-RS, SPSA, NES and
HopSkipJump. For each it reports the robust accuracy left (the fraction of the
returned examples still classified correctly) and the mean perturbation norm.
Printed: per attack, the minimum time over the rounds divided by the floor
(per gradient for the gradient attacks with a fixed count; per call otherwise),
for both sides, the ratio of those two ratios (new over old, so that load that
slows a whole side cancels), the spread of each side's times over the rounds
(max / min: the noise), and both robust accuracies and mean norms (which must
agree, except where a change of results was intended).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def worker() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxadv
    from jaxadv import examples

    train, test = examples.load_digits(0)
    model = examples.DigitsCNN()
    f = jaxadv.from_flax(model, examples.train_classifier(model, train, epochs=10))
    x, y = jnp.asarray(test.x[:128]), jnp.asarray(test.y[:128])
    key = jax.random.key(0)
    eps = 0.1

    def grad_once(x: jax.Array) -> jax.Array:
        return jaxadv.gradients.loss_and_grad(f, x, y, loss=jaxadv.cross_entropy, targeted=False)[2]

    floor_fn = jax.jit(grad_once)
    import inspect

    def call(fn: Any, **kw: Any) -> Any:
        """``fn`` with the keywords it takes (a key is optional or absent in some versions)."""
        params = inspect.signature(fn).parameters
        return fn(f, x, y, **{k: v for k, v in kw.items() if k in params})

    k = {"key": key}
    # name: (floor gradients per call, or 1 for "per call"; the norm reported; the call)
    attacks: dict[str, tuple[int, str, Any]] = {
        "fgsm": (1, "linf", lambda: call(jaxadv.fgsm, eps=eps)),
        "bim-10": (10, "linf", lambda: call(jaxadv.bim, eps=eps, steps=10)),
        "pgd-10": (10, "linf", lambda: call(jaxadv.pgd, eps=eps, steps=10, **k)),
        "pgd-10-l2": (10, "l2", lambda: call(jaxadv.pgd, eps=1.0, steps=10, norm="l2", **k)),
        "pgd-10-l1": (10, "l1", lambda: call(jaxadv.pgd, eps=4.0, steps=10, norm="l1", **k)),
        "mifgsm-10": (10, "linf", lambda: call(jaxadv.mifgsm, eps=eps, steps=10)),
        "apgd-ce-100": (100, "linf", lambda: call(jaxadv.apgd, eps=eps, steps=100, **k)),
        "apgd-ce-100-l1": (100, "l1", lambda: call(jaxadv.apgd, eps=4.0, steps=100, norm="l1", **k)),
        "apgd-t-20": (1, "linf", lambda: call(jaxadv.apgd_targeted, eps=eps, steps=20, **k)),
        "fab-20": (1, "linf", lambda: call(jaxadv.fab, steps=20, **k)),
        "fmn-50": (50, "l2", lambda: call(jaxadv.fmn, steps=50, **k)),
        "deepfool-20": (1, "l2", lambda: call(jaxadv.deepfool, steps=20, **k)),
        "cw-50x3": (150, "l2", lambda: call(jaxadv.cw_l2, steps=50, binary_search_steps=3, **k)),
        "ead-50x3": (150, "l1", lambda: call(jaxadv.ead, steps=50, binary_search_steps=3, **k)),
        "jsma": (1, "l1", lambda: call(jaxadv.jsma, **k)),
        "square-300": (1, "linf", lambda: call(jaxadv.square, eps=eps, queries=300, **k)),
        "sparse-rs-300": (1, "l1", lambda: call(jaxadv.sparse_rs, k=4, queries=300, **k)),
        "spsa-10": (10, "linf", lambda: call(jaxadv.spsa, eps=eps, queries=331, **k)),
        "nes-10": (10, "linf", lambda: call(jaxadv.nes, eps=eps, queries=331, **k)),
        "hsj-300": (1, "l2", lambda: call(jaxadv.hop_skip_jump, queries=300, **k)),
    }

    def timed(fn: object) -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn())  # type: ignore[operator]
        return time.perf_counter() - start

    jax.block_until_ready(floor_fn(x))
    out: dict[str, object] = {"floor": min(timed(lambda: floor_fn(x)) for _ in range(20))}
    for name, (grads, norm, fn) in attacks.items():
        x_adv = jax.block_until_ready(fn())
        x_adv = getattr(x_adv, "x_adv", x_adv)  # an old revision's score-based result type
        t = min(timed(fn) for _ in range(3))
        acc = float(np.mean(np.asarray(jaxadv.predict(f, x_adv)) == np.asarray(y)))
        d = np.asarray(x_adv, np.float64).reshape(len(y), -1) - np.asarray(x, np.float64).reshape(len(y), -1)
        size = {"linf": np.abs(d).max(axis=1), "l2": np.sqrt((d**2).sum(axis=1)), "l1": np.abs(d).sum(axis=1)}
        out[name] = {"seconds": t, "grads": grads, "robust_accuracy": acc, "norm": float(size[norm].mean())}
    print("RESULT " + json.dumps(out))


def run_side(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(path)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        env=env,
        cwd=str(path),
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="HEAD~1", help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.old], cwd=ROOT, check=True)
        try:
            sides: dict[str, list[dict]] = {"old": [], "new": []}
            for _ in range(args.rounds):
                sides["old"].append(run_side(old))
                sides["new"].append(run_side(ROOT))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    print(
        f"old = {args.old}, new = working tree; digits CNN, 128 examples, eps 0.1; "
        f"min over {args.rounds} rounds"
    )
    print(
        "| attack | old / floor | new / floor | new / old | spread old | spread new | acc. old | acc. new "
        "| mean norm old | mean norm new |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sides["new"][0]:
        if name == "floor":
            continue
        row = []
        for side in ("old", "new"):
            floor = min(r["floor"] for r in sides[side])
            times = [r[name]["seconds"] for r in sides[side]]
            first = sides[side][0][name]
            row.append((min(times) / (floor * first["grads"]), max(times) / min(times), first))
        (ro, so, fo), (rn, sn, fn) = row
        print(
            f"| {name} | {ro:.2f} | {rn:.2f} | {rn / ro:.2f} | {so:.2f} | {sn:.2f} | "
            f"{fo['robust_accuracy']:.3f} | {fn['robust_accuracy']:.3f} | "
            f"{fo['norm']:.4g} | {fn['norm']:.4g} |"
        )


if __name__ == "__main__":
    main()
