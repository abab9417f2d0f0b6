"""L1 PGD with the exact projection onto ball and box, against the ball's projection
clipped to the box, on the bundled digits models (robust accuracy and budget used).

Each variant runs in its own process (the compiled loops are cached per process).
Run from the repository root: ``python benchmarks/bench_l1_projection.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import sys
sys.path.insert(0, "tests")
import jax, jax.numpy as jnp, numpy as np, jaxadv
import jaxadv.compose.loop as loop
from jaxadv.threat_models import clip_to_bounds, project
from small_models import trained_digits
from jaxadv import examples

if sys.argv[1] == "clip":  # the earlier rule: the ball's projection, then the box's clip
    def clipped(a, x, eps, norm, lo, hi):
        return clip_to_bounds(x + project(a - x, eps, norm), lo, hi)
    loop.project_to_feasible = clipped
x, y = examples.load_digits(0)[1].x[:200], examples.load_digits(0)[1].y[:200]
for name in ("mlp", "cnn"):
    m = trained_digits(name)
    for eps in (1.0, 2.0, 4.0):
        for steps in (10, 50):
            kw = dict(eps=eps, norm="l1", steps=steps, key=jax.random.key(0))
            xa = np.asarray(jaxadv.pgd(m.logits_fn, x, y, **kw))
            acc = float(np.mean(np.argmax(np.asarray(m.logits_fn(jnp.asarray(xa))), -1) == y))
            used = float(np.mean(np.abs(xa - x).reshape(len(x), -1).sum(1)))
            print(f"{name} {eps} {steps} {acc:.3f} {used:.3f}", flush=True)
"""


def main() -> None:
    rows: dict[str, list[list[str]]] = {}
    for mode in ("clip", "exact"):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, mode], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        rows[mode] = [line.split() for line in out.splitlines() if line.strip()]
    print("| model | eps (L1) | steps | robust acc., clip | exact | mean L1 used, clip | exact |")
    print("|---|---|---|---|---|---|---|")
    for a, b in zip(rows["clip"], rows["exact"], strict=True):
        print(f"| {a[0]} | {a[1]} | {a[2]} | {a[3]} | {b[3]} | {a[4]} | {b[4]} |")


if __name__ == "__main__":
    main()
