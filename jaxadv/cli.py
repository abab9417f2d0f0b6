"""``jaxadv evaluate``: robust accuracy of a saved Flax model from the command line.

    jaxadv evaluate --model mymodels:make_model --weights ckpt/ \\
        --data test.npz --eps 0.03 --norm linf --suite standard --out report/

* ``--model`` names a factory ``module:function`` that takes no arguments and
  returns a Flax linen module; ``module`` is imported from ``--app-dir``
  (default: the current directory), then from the installed packages;
* ``--weights`` is a directory written by Orbax holding the module's
  variables, an Orbax checkpoint (:doc:`/cli` gives a script that writes one);
* ``--data`` is an ``.npz`` file with arrays ``x`` (``[n, ...]`` floats inside
  ``--bounds``, or ``uint8`` with ``--uint8-scale``) and ``y`` (``[n]`` labels:
  integers, floats that are exactly integers, or one-hot rows ``[n, C]``, taken
  as their argmax).

Writes ``report.json`` (see :class:`jaxadv.EvaluationResult`), ``summary.txt``,
``accuracy_vs_eps.png``, ``accuracy_vs_eps.json`` and, for image inputs,
``examples.png`` to ``--out``. While it runs, ``partial.json`` in ``--out``
holds the finished batches: after an interruption, rerun the same command with
``--resume`` to continue. An existing ``partial.json`` (without ``--resume``)
or ``report.json`` is never overwritten without ``--overwrite``. (That file
is :func:`jaxadv.evaluate`'s ``checkpoint=``, its progress file; the model's
weights are ``--weights``.)

A problem with the arguments or the input files prints one line
``jaxadv evaluate: error: ...`` to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CliError",
    "add_evaluate_parser",
    "load_data",
    "load_factory",
    "restore_variables",
    "run_evaluate",
]

PROG = "jaxadv evaluate"
_NORMS = {"linf": "linf", "inf": "linf", "l2": "l2", "l1": "l1"}


class CliError(Exception):
    """A problem with the command's arguments or input files (not a bug): one line, exit status 2."""


def _norm_name(value: str) -> str:
    """``--norm`` in any capitalisation (AutoAttack writes ``Linf``, ``L2``, ``L1``)."""
    return _NORMS.get(value.lower(), value)


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto', got {text!r}") from None


def add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="robust accuracy of a saved Flax model under an attack suite",
        description="Robust accuracy of a saved Flax model under an attack suite (see the jaxadv docs, "
        "'Command line').",
    )
    p.add_argument("--model", required=True, help="factory 'module:function' returning a Flax linen module")
    p.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory to import the factory's module from (default: the current directory)",
    )
    p.add_argument(
        "--weights",
        required=True,
        metavar="DIR",
        help="the model's variables: a directory written by Orbax (an Orbax checkpoint)",
    )
    p.add_argument("--data", required=True, help=".npz file with arrays x and y")
    p.add_argument("--eps", type=float, required=True, help="radius, in the units of x (finite, >= 0)")
    p.add_argument(
        "--norm",
        default="linf",
        type=_norm_name,
        choices=["linf", "l2", "l1"],
        help="threat model; any capitalisation (Linf, L2, L1)",
    )
    p.add_argument(
        "--suite",
        default="standard",
        help="'standard', 'plus', 'rand', 'fast' or comma-separated attack names",
    )
    p.add_argument("--out", default="jaxadv-report", help="output folder")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=256,
        help="examples per compiled call, or 'auto': the largest that fits, halving on out-of-memory",
    )
    p.add_argument(
        "--bounds",
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="valid input range of x, LO < HI (default: 0 1)",
    )
    p.add_argument(
        "--uint8-scale", action="store_true", help="x is uint8 (0..255): divide by 255, bounds 0 1"
    )
    p.add_argument(
        "--mean", type=float, nargs="+", default=None, help="normalisation mean: one value or one per channel"
    )
    p.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=None,
        help="normalisation std (> 0): one value or one per channel",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the attacks' random key, jax.random.key(SEED) (default: 0; --resume needs the same)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/partial.json")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT/report.json or OUT/partial.json"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-checks",
        action="store_true",
        help="skip the gradient-masking checks (evaluate's checks=False)",
    )
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="also compute each example's indicators of attack failure (evaluate's diagnose=True): "
        "counted in the summary, per example in report.json",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="diagnose, then attack the flagged robust examples again with the fixes their indicators "
        "name (evaluate's adaptive=True; more steps, a black-box attack, BPDA with --surrogate); "
        "reports both robust accuracies",
    )
    p.add_argument(
        "--surrogate",
        metavar="MODULE:FUNCTION",
        help="with --adaptive: a factory, like --model's, of the BPDA surrogate (the same network with "
        "jaxadv.bpda around its non-differentiable layers), run with --weights' variables: the BPDA fix "
        "attacks it, and success is judged on --model",
    )


# --- inputs -----------------------------------------------------------------------


def load_factory(spec: str, app_dir: str | Path = ".") -> Any:
    """Resolve ``module:function``, importing ``module`` from ``app_dir`` first.

    ``app_dir`` (resolved against the current directory) is put first on
    ``sys.path``, so the installed ``jaxadv`` command and ``python -m jaxadv``
    find the same modules.

    Raises:
      CliError: a malformed spec, a missing directory, module or attribute, or
        a module that fails to import.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"--model must look like 'module:function' (e.g. mymodels:make_model), got {spec!r}")
    directory = Path(app_dir).resolve()
    if not directory.is_dir():
        raise CliError(f"--app-dir {app_dir!r} is not a directory")
    if not sys.path or sys.path[0] != str(directory):
        sys.path.insert(0, str(directory))
    importlib.invalidate_caches()  # the module may have been written after the directory was first read
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CliError(f"cannot import {module_name!r} for --model (searched {directory} first): {e}") from e
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing; say which and why
        raise CliError(f"importing {module_name!r} for --model raised {type(e).__name__}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise CliError(f"module {module_name!r} ({module.__file__}) has no attribute {attr!r}") from e


def _build_model(spec: str, app_dir: str | Path) -> Any:
    import flax.linen as nn

    factory = load_factory(spec, app_dir)
    if not callable(factory):
        raise CliError(f"--model {spec!r} is not callable (a factory taking no arguments)")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed; report it as an input problem
        raise CliError(f"the model factory {spec!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise CliError(
            f"the model factory {spec!r} must return a flax.linen.Module, got {type(model).__name__}"
        )
    return model


def restore_variables(path: str | Path) -> Any:
    """Variables saved with ``orbax.checkpoint.StandardCheckpointer``.

    Raises:
      CliError: the directory is missing or holds no readable checkpoint.
    """
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    if not path.is_dir():
        raise CliError(f"--weights {path} is not a directory (an Orbax checkpoint of the variables)")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot restore an Orbax checkpoint from --weights {path}: {e}") from e


def _labels(y: np.ndarray, n: int) -> np.ndarray:
    """``[n]`` int32 labels from integers, exactly integral floats or one-hot rows."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        onehot = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool
        if onehot:
            rows = y.astype(np.float64)
            onehot = bool(np.all((rows == 0) | (rows == 1)) and np.all(rows.sum(axis=1) == 1))
        if not onehot:
            raise CliError(
                f"y of shape {y.shape} must be one-hot rows (a single 1 per row); soft labels are not "
                "supported: save y.argmax(1) if that is what you mean"
            )
        return np.argmax(y, axis=1).astype(np.int32)
    if y.shape != (n,):
        raise CliError(f"y must have shape [n]=({n},) or [n, classes] (one-hot), got {y.shape}")
    if np.issubdtype(y.dtype, np.integer):
        labels = y
    elif np.issubdtype(y.dtype, np.floating):
        bad = np.nonzero(~np.isfinite(y) | (y != np.round(y)))[0]
        if bad.size:
            raise CliError(
                f"y must hold integer labels; y[{bad[0]}] = {float(y[bad[0]])} is not an integer "
                f"({bad.size} such labels)"
            )
        labels = y
    else:
        raise CliError(f"y must hold integer labels, got dtype {y.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise CliError(f"labels must be class indices >= 0, found values in [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


def load_data(path: str | Path, *, uint8_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 [n, ...], y int32 [n])`` from an ``.npz`` file (rules: module docstring).

    With ``uint8_scale``, ``x`` must be ``uint8`` and is returned as ``x / 255``
    (inside ``(0, 1)``); without it, ``uint8`` (or any integer) ``x`` is refused.

    Raises:
      CliError: a missing or unreadable file, missing arrays, bad shapes or
        dtypes, non-finite inputs or labels that are not integers.
    """
    path = Path(path)
    if not path.is_file():
        raise CliError(f"--data {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CliError(f"cannot read --data {path} (an .npz file from np.savez): {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CliError(
            f"--data {path} must be an .npz archive (np.savez(path, x=..., y=...)), not a single array"
        )
    with archive as data:
        if "x" not in data or "y" not in data:
            raise CliError(f"--data {path} must hold arrays 'x' and 'y', it holds {sorted(data.files)}")
        try:
            x, y = data["x"], data["y"]
        except ValueError as e:  # object arrays need pickle
            raise CliError(f"cannot read the arrays of --data {path}: {e}") from e
    if x.ndim < 2 or x.shape[0] == 0:
        raise CliError(
            f"x must have shape [n, ...] with n >= 1 examples of at least one feature, got {x.shape}"
        )
    n = x.shape[0]
    if len(y) != n:
        raise CliError(f"x holds {n} examples but y holds {len(y)} labels")
    if x.dtype == np.uint8:
        if not uint8_scale:
            raise CliError(
                "x is uint8 (0..255): pass --uint8-scale to evaluate x / 255 in bounds (0, 1), "
                "or save float32 inputs inside --bounds"
            )
        x = x.astype(np.float32) / np.float32(255.0)
    elif uint8_scale:
        raise CliError(f"--uint8-scale needs uint8 x, got dtype {x.dtype}")
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise CliError(
            f"x must hold floating-point inputs (or uint8 with --uint8-scale), got dtype {x.dtype}"
        )
    if not np.all(np.isfinite(x)):
        raise CliError(f"x holds {int(np.sum(~np.isfinite(x)))} NaN or infinite values")
    return x, _labels(np.asarray(y), n)


def _finite(values: Any) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_numbers(args: argparse.Namespace) -> None:
    if not _finite([args.eps]) or args.eps < 0:
        raise CliError(f"--eps must be a finite number >= 0, got {args.eps}")
    lo, hi = args.bounds
    if not _finite(args.bounds) or not lo < hi:
        raise CliError(f"--bounds must be two finite numbers LO < HI, got {lo} {hi}")
    if args.uint8_scale and (lo, hi) != (0.0, 1.0):
        raise CliError(f"--uint8-scale evaluates x / 255 in bounds (0, 1); --bounds {lo} {hi} contradicts it")
    if args.batch_size != "auto" and args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.std is not None and (not _finite(args.std) or min(args.std) <= 0):
        raise CliError(f"--std must hold finite values > 0 (it divides the inputs), got {args.std}")
    if args.mean is not None and not _finite(args.mean):
        raise CliError(f"--mean must hold finite values, got {args.mean}")


def _normalisation(values: list[float] | None, name: str, x: np.ndarray) -> np.ndarray | None:
    """One value, or one per channel (the last axis of ``x``, channels last as in Flax)."""
    if values is None:
        return None
    channels = x.shape[-1]
    if len(values) not in (1, channels):
        raise CliError(
            f"{name} has {len(values)} values; give 1, or {channels} (one per channel: the last axis of "
            f"x, shape {x.shape})"
        )
    return np.asarray(values[0] if len(values) == 1 else values, np.float32)


def _check_outputs(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Refuse to clobber earlier results; True when ``partial.json`` is to be resumed."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    report, partial = out / "report.json", out / "partial.json"
    if report.exists() and not overwrite:
        raise CliError(
            f"{report} exists (a finished run); pass --overwrite to replace it, or choose another --out"
        )
    if partial.exists() and not (resume or overwrite):
        raise CliError(
            f"{partial} holds an interrupted run; pass --resume to continue it, or --overwrite to start over"
        )
    if resume and not partial.exists():
        print(f"{PROG}: nothing to resume in {out}; starting from the first example", file=sys.stderr)
    return resume and partial.exists()


def _logits_fn(
    args: argparse.Namespace, x: np.ndarray, y: np.ndarray, variables: Any, factory: str | None = None
) -> Any:
    """The model (or, with ``factory``, the surrogate built by it) with the restored
    ``variables`` as ``logits_fn``, run once on ``x[:1]`` to report a mismatch as an
    input problem."""
    import jax.numpy as jnp

    import jaxadv

    model = _build_model(factory or args.model, args.app_dir)
    mean = _normalisation(args.mean, "--mean", x)
    std = _normalisation(args.std, "--std", x)
    logits_fn = jaxadv.from_flax(model, variables, mean=mean, std=std)
    what = "the model" if factory is None else f"the surrogate {factory}"
    try:
        logits = np.asarray(logits_fn(jnp.asarray(x[:1])))
    except Exception as e:  # noqa: BLE001 - model, variables and data that do not fit together
        raise CliError(
            f"{what} cannot run on x[:1] (shape {x[:1].shape}) with the restored variables: "
            f"{type(e).__name__}: {e}"
        ) from e
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise CliError(f"{what} must return logits of shape [batch, classes], got {logits.shape} for x[:1]")
    classes = logits.shape[1]
    if y.max() >= classes:
        raise CliError(f"y holds label {y.max()} but {what} has {classes} classes")
    return logits_fn


# --- the command --------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``jaxadv evaluate``; an input problem prints one line and returns 2."""
    try:
        return _evaluate(args)
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    # Arguments and files first: a mistake is reported before any model is built.
    _check_numbers(args)
    if args.surrogate is not None and not args.adaptive:
        raise CliError("--surrogate is the BPDA fix of the adaptive re-attack: pass --adaptive too")
    out = Path(args.out)
    resuming = _check_outputs(out, resume=args.resume, overwrite=args.overwrite)
    x, y = load_data(args.data, uint8_scale=args.uint8_scale)

    import jax

    import jaxadv
    from jaxadv.evaluation import accuracy_vs_eps, plot_accuracy_vs_eps, plot_examples

    variables = restore_variables(args.weights)  # once, for the model and its surrogate
    logits_fn = _logits_fn(args, x, y, variables)
    surrogate_fn = None if args.surrogate is None else _logits_fn(args, x, y, variables, args.surrogate)
    suite = args.suite if args.suite in jaxadv.evaluation.SUITES else args.suite.split(",")
    out.mkdir(parents=True, exist_ok=True)
    if args.overwrite:  # a stale report must not sit beside the new run's partial.json
        (out / "report.json").unlink(missing_ok=True)
    key = jax.random.key(args.seed)
    bounds = (float(args.bounds[0]), float(args.bounds[1]))
    try:
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
            checks=not args.no_checks,
            diagnose=args.diagnose,
            adaptive=args.adaptive,
            surrogate_fn=surrogate_fn,
            checkpoint=out / "partial.json",
            resume=args.resume,
            overwrite=args.overwrite,
            # The adversarial examples of a resumed run's earlier batches are gone.
            store_adversarial=not resuming,
        )
    except ValueError as e:  # bad inputs, or a checkpoint from another run (CheckpointError)
        raise CliError(str(e)) from e
    result.save(out / "report.json")
    (out / "partial.json").unlink(missing_ok=True)
    summary = result.summary()
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)

    grid = np.linspace(0.0, 2.0 * args.eps, 9)
    n = min(len(y), result.batch_size or len(y))
    curve = accuracy_vs_eps(logits_fn, x[:n], y[:n], eps_values=grid, key=key, norm=args.norm, bounds=bounds)
    plot_accuracy_vs_eps(grid, {"PGD-20": curve}, norm=args.norm, path=out / "accuracy_vs_eps.png")
    meta = {"eps_grid": grid.tolist(), "pgd20_accuracy": np.asarray(curve).tolist(), "examples": n}
    (out / "accuracy_vs_eps.json").write_text(json.dumps(meta, indent=1, allow_nan=False))
    x_adv = result.x_adv
    if x.ndim in (3, 4) and x_adv is None:
        print(f"{PROG}: examples.png is not drawn for a resumed run", file=sys.stderr)
    elif x.ndim in (3, 4) and x_adv is not None:
        fooled = np.nonzero(result.fooled_by >= 0)[0][:8]
        if fooled.size:
            pc = np.asarray(jaxadv.predict(logits_fn, x[fooled]))
            pa = np.asarray(jaxadv.predict(logits_fn, x_adv[fooled]))
            plot_examples(x[fooled], x_adv[fooled], pc, pa, path=out / "examples.png")
    print(f"report written to {out}/")
    return 0
