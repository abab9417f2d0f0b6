"""``jaxadv evaluate``: robust accuracy of a saved Flax model from the command line.

    jaxadv evaluate --model mypkg.models:make_model --checkpoint ckpt/ \\
        --data test.npz --eps 0.03 --norm linf --suite standard --out report/

* ``--model`` names a factory ``package.module:function`` that takes no
  arguments and returns a Flax linen module;
* ``--checkpoint`` is a directory written by Orbax
  (``orbax.checkpoint.StandardCheckpointer().save(path, variables)``) holding
  the module's variables;
* ``--data`` is an ``.npz`` file with arrays ``x`` (``[n, ...]``, inside the
  bounds) and ``y`` (``[n]`` integer labels).

Writes ``report.json`` (see :class:`jaxadv.EvaluationResult`), ``summary.txt``,
``accuracy_vs_eps.png`` and, for image inputs, ``examples.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np


def add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="robust accuracy of a saved Flax model under an attack suite")
    p.add_argument("--model", required=True, help="factory 'package.module:function' returning a Flax module")
    p.add_argument("--checkpoint", required=True, help="Orbax checkpoint directory with the variables")
    p.add_argument("--data", required=True, help=".npz file with arrays x and y")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--norm", default="linf", choices=["linf", "l2", "l1"])
    p.add_argument("--suite", default="standard", help="'standard', 'fast' or comma-separated attack names")
    p.add_argument("--out", default="jaxadv-report", help="output folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--bounds", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"))
    p.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean (per channel)")
    p.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std (per channel)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def load_factory(spec: str) -> Any:
    """Resolve ``package.module:function``."""
    if ":" not in spec:
        raise SystemExit(f"--model must look like 'package.module:function', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"cannot load model factory {spec!r}: {e}") from e


def restore_variables(path: str | Path) -> Any:
    """Variables saved with ``orbax.checkpoint.StandardCheckpointer``."""
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    if not path.exists():
        raise SystemExit(f"checkpoint {path} does not exist")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path)


def run_evaluate(args: argparse.Namespace) -> int:
    import jax

    import jaxadv
    from jaxadv.evaluation import accuracy_vs_eps, plot_accuracy_vs_eps, plot_examples

    model = load_factory(args.model)()
    variables = restore_variables(args.checkpoint)
    logits_fn = jaxadv.from_flax(model, variables, mean=args.mean, std=args.std)
    with np.load(args.data) as data:
        if "x" not in data or "y" not in data:
            raise SystemExit(f"{args.data} must hold arrays 'x' and 'y'")
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int32)
    suite = args.suite if args.suite in jaxadv.evaluation.SUITES else args.suite.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    bounds = tuple(args.bounds)
    result = jaxadv.evaluate(
        logits_fn,
        x,
        y,
        eps=args.eps,
        norm=args.norm,
        suite=suite,
        key=key,
        batch_size=args.batch_size,
        bounds=bounds,
        progress=not args.no_progress,
        checkpoint=out / "partial.json",
        store_adversarial=True,
    )
    result.save(out / "report.json")
    (out / "partial.json").unlink(missing_ok=True)
    summary = result.summary()
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)

    grid = np.linspace(0.0, 2.0 * args.eps, 9)
    n = min(len(y), args.batch_size)
    curve = accuracy_vs_eps(logits_fn, x[:n], y[:n], eps_values=grid, key=key, norm=args.norm, bounds=bounds)
    plot_accuracy_vs_eps(grid, {"PGD-20": curve}, norm=args.norm, path=out / "accuracy_vs_eps.png")
    meta = {"eps_grid": grid.tolist(), "pgd20_accuracy": curve.tolist(), "examples": n}
    (out / "accuracy_vs_eps.json").write_text(json.dumps(meta, indent=1))
    if x.ndim in (3, 4) and result.x_adv is not None:
        fooled = np.nonzero(result.fooled_by >= 0)[0][:8]
        if fooled.size:
            pc = np.asarray(jaxadv.predict(logits_fn, x[fooled]))
            pa = np.asarray(jaxadv.predict(logits_fn, result.x_adv[fooled]))
            plot_examples(x[fooled], result.x_adv[fooled], pc, pa, path=out / "examples.png")
    print(f"report written to {out}/")
    return 0
