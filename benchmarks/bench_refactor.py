"""Old commit against the working tree, side by side: did a refactor cost speed or change results?

Run from the repository root::

    python benchmarks/bench_refactor.py --old 37a76ae     # any revision

The old revision is checked out into a temporary ``git worktree``; each side
runs in its own subprocess (two versions of one package cannot share a
process), alternately, ``--rounds`` times, so that load from other processes
hits both alike. Each worker times, on the digits CNN of :mod:`jaxadv.examples`
(128 test digits, direct calls, warmed up): one jitted input-gradient (the
floor), PGD-10, MI-FGSM-10, APGD-CE-100, FGSM and the score-based SPSA and
NES (10 steps of 16 antithetic pairs), and reports the robust accuracy each
attack leaves at eps = 0.1. Printed: per attack, the minimum time over the
rounds divided by its number of floor gradients (SPSA and NES: by 10, as a
unit only, they take no gradient), for both sides, the ratio of those two
ratios (new over old, so that load that slows a whole side cancels), the
ratio of the raw times, and both robust accuracies (which must agree).
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
    attacks = {
        "fgsm": (1, lambda: jaxadv.fgsm(f, x, y, eps=eps)),
        "pgd-10": (10, lambda: jaxadv.pgd(f, x, y, key=key, eps=eps, steps=10)),
        "mifgsm-10": (10, lambda: jaxadv.mifgsm(f, x, y, eps=eps, steps=10)),
        "apgd-ce-100": (100, lambda: jaxadv.apgd(f, x, y, key=key, eps=eps, steps=100)),
        "spsa-10": (10, lambda: jaxadv.spsa(f, x, y, key=key, eps=eps, queries=331)),
        "nes-10": (10, lambda: jaxadv.nes(f, x, y, key=key, eps=eps, queries=331)),
    }

    def timed(fn: object) -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn())  # type: ignore[operator]
        return time.perf_counter() - start

    jax.block_until_ready(floor_fn(x))
    out: dict[str, object] = {"floor": min(timed(lambda: floor_fn(x)) for _ in range(20))}
    for name, (grads, fn) in attacks.items():
        x_adv = jax.block_until_ready(fn())
        x_adv = getattr(x_adv, "x_adv", x_adv)  # an old revision's score-based result type
        t = min(timed(fn) for _ in range(3))
        acc = float(np.mean(np.asarray(jaxadv.predict(f, x_adv)) == np.asarray(y)))
        out[name] = {"seconds": t, "grads": grads, "robust_accuracy": acc}
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
    parser.add_argument("--rounds", type=int, default=2)
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
        f"{'attack':14s} {'old/floor':>10s} {'new/floor':>10s} {'new/old':>8s} {'time n/o':>9s} "
        f"{'acc old':>8s} {'acc new':>8s}"
    )
    for name in ("fgsm", "pgd-10", "mifgsm-10", "apgd-ce-100", "spsa-10", "nes-10"):
        row = []
        for side in ("old", "new"):
            floor = min(r["floor"] for r in sides[side])
            t = min(r[name]["seconds"] for r in sides[side])
            row.append(
                (t / (floor * sides[side][0][name]["grads"]), t, sides[side][0][name]["robust_accuracy"])
            )
        (ro, to, ao), (rn, tn, an) = row
        print(f"{name:14s} {ro:10.2f} {rn:10.2f} {rn / ro:8.2f} {tn / to:9.2f} {ao:8.3f} {an:8.3f}")


if __name__ == "__main__":
    main()
