"""The demo: attack a small CNN trained on the bundled digits set.

``python -m jaxadv`` (or ``jaxadv demo``) works offline: it trains the digits
CNN and an MLP surrogate (a few seconds each on a CPU), then runs every attack
family of the library on the 397 held-out digits and prints

* the accuracy of the CNN under each L-inf attack at a few eps (pixels in
  ``[0, 1]``): single-step, iterative, momentum, Auto-PGD, score-based
  black-box, decision-based black-box and transfer from the surrogate;
* how often targeted attacks reach their target (least-likely class, random
  class);
* the size of the perturbations found by the minimal-perturbation attacks
  (DeepFool, Carlini-Wagner L2), which have no eps.

It writes ``accuracy_vs_eps.png``, ``examples.png``, ``minimal_l2.png`` and
``results.json`` to the output folder (``./jaxadv-demo`` by default).

Each stage prints one line when it ends, with its time split into compilation
(tracing, lowering and XLA's compiler, as JAX's monitoring events report them)
and the rest, the run: on a CPU most of a first call is compilation, which a
second call with the same shapes skips.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxadv
from jaxadv import examples

#: Where ``python -m jaxadv`` writes its figures.
DEFAULT_OUT = "jaxadv-demo"

_Attack = Callable[[np.ndarray], Any]


def _attack_table(
    logits_fn: Any,
    surrogate_fn: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    queries: int,
    key: jax.Array,
) -> dict[str, _Attack]:
    """The L-inf attacks of the table, ``name -> (eps [batch] -> adversarial batch)``.

    Every attack takes a per-example ``eps``: the demo stacks copies of the test
    set, one per eps value, and attacks them in one call.
    """
    k_pgd, k_apgd, k_sq, k_mi = jax.random.split(key, 4)
    attacks: dict[str, _Attack] = {
        "FGSM": lambda e: jaxadv.fgsm(logits_fn, x, y, eps=e),
        f"BIM-{steps}": lambda e: jaxadv.bim(logits_fn, x, y, eps=e, steps=steps),
        f"PGD-{steps}": lambda e: jaxadv.pgd(logits_fn, x, y, key=k_pgd, eps=e, steps=steps),
        f"PGD-{steps} (CW loss)": lambda e: jaxadv.pgd(
            logits_fn, x, y, key=k_pgd, eps=e, steps=steps, loss=jaxadv.cw_margin
        ),
        f"MI-FGSM-{steps}": lambda e: jaxadv.mifgsm(logits_fn, x, y, eps=e, steps=steps, key=k_mi),
        f"APGD-CE-{steps}": lambda e: jaxadv.apgd(logits_fn, x, y, key=k_apgd, eps=e, steps=steps),
        f"APGD-T-{steps} (3 targets)": lambda e: jaxadv.apgd_targeted(
            logits_fn, x, y, key=k_apgd, eps=e, steps=steps, num_target_classes=3
        ),
        f"Square ({queries} queries)": lambda e: jaxadv.square(
            logits_fn, x, y, key=k_sq, eps=e, queries=queries
        ),
        "transfer from MLP (PGD)": lambda e: (
            jaxadv.transfer(jaxadv.pgd, surrogate_fn, logits_fn, x, y, key=k_pgd, eps=e, steps=steps).x_adv
        ),
    }
    return attacks


class _CompileClock:
    """Seconds JAX spends compiling (tracing, lowering to MLIR, XLA's compiler), summed
    from its monitoring events while :attr:`on`; one listener for the process."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self) -> None:
        self.seconds = 0.0
        self.on = False
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration_secs: float, **_: str | int) -> None:
        if self.on and event in self.EVENTS:
            with self._lock:
                self.seconds += duration_secs


_clock: _CompileClock | None = None


def _timed(print_fn: Callable[[str], None], label: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``, then print one line: the stage's time, compilation and run apart."""
    global _clock
    if _clock is None:
        _clock = _CompileClock()
    _clock.seconds, _clock.on = 0.0, True
    t0 = time.perf_counter()
    try:
        out = jax.block_until_ready(fn())
    finally:
        _clock.on = False
    total = time.perf_counter() - t0
    compiling = min(_clock.seconds, total)
    print_fn(f"{label}: {total:.1f}s (compile {compiling:.1f}s, run {total - compiling:.1f}s)")
    return out


def _format_table(title: str, columns: Sequence[str], rows: Mapping[str, Sequence[str]]) -> list[str]:
    width = max(len(title), *(len(n) for n in rows)) + 2
    col = max(10, *(len(c) + 2 for c in columns))
    header = title.ljust(width) + "".join(c.ljust(col) for c in columns)
    lines = [header, "-" * len(header)]
    lines += [name.ljust(width) + "".join(v.ljust(col) for v in row) for name, row in rows.items()]
    return lines


def _write_figures(
    out: Path,
    eps_values: Sequence[float],
    table: dict[str, list[float]],
    examples_grid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    minimal: dict[str, np.ndarray],
    attack_name: str,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from jaxadv.evaluation import plot_accuracy_vs_eps, plot_examples

    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig = plot_accuracy_vs_eps(
        [0.0, *eps_values],
        {name: [table["clean"][0], *row] for name, row in table.items() if name != "clean"},
        title="Digits CNN: accuracy under attack (L-inf)",
    )
    fig.set_size_inches(7.5, 5)
    fig.axes[0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    written.append(out / "accuracy_vs_eps.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    x, x_adv, pc, pa = examples_grid
    if len(x):
        title = f"{attack_name} (L-inf): clean digits, adversarial digits, change"
        fig = plot_examples(x, x_adv, pc, pa, num=len(x), title=title)
        written.append(out / "examples.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    if minimal:
        fig, ax = plt.subplots(figsize=(6, 4))
        finite = [d[np.isfinite(d)] for d in minimal.values()]
        top = max((float(f.max()) for f in finite if f.size), default=1.0)
        bins = np.linspace(0.0, top, 30).tolist()
        for (name, _), f in zip(minimal.items(), finite, strict=True):
            ax.hist(f, bins=bins, alpha=0.6, label=f"{name} (median {np.median(f):.2f})")
        ax.set_xlabel(r"L2 norm of the perturbation $\|x' - x\|_2$")
        ax.set_ylabel("number of digits")
        ax.set_title("Minimal-perturbation attacks: how far is the boundary?")
        ax.legend()
        fig.tight_layout()
        written.append(out / "minimal_l2.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def run(
    eps_values: Sequence[float] = (0.05, 0.1, 0.2),
    *,
    steps: int = 20,
    seed: int = 0,
    queries: int = 500,
    minimal_examples: int = 100,
    out: str | Path | None = DEFAULT_OUT,
    print_fn: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Train the digits CNN, attack it with every attack family and tabulate.

    Args:
      eps_values: L-inf radii (pixels in ``[0, 1]``), one column each.
      steps: iterations of the iterative attacks.
      seed: data shuffle, model initialisation and attack randomness.
      queries: per-example query budget of the black-box attacks.
      minimal_examples: how many test digits the minimal-perturbation attacks
        (DeepFool, Carlini-Wagner, HopSkipJump) run on.
      out: folder for the figures and ``results.json``; ``None`` writes nothing.
      print_fn: where progress and tables go.

    Returns:
      ``{attack name: [accuracy at each eps]}``, ``"clean"`` included (the
      clean accuracy repeated). Keys include ``"FGSM"``, ``f"BIM-{steps}"``
      and ``f"PGD-{steps}"``.
    """
    t_start = time.perf_counter()
    eps_values = [float(e) for e in eps_values]
    train, test = examples.load_digits(seed)
    x, y = test.x, test.y
    model, surrogate = examples.DigitsCNN(), examples.DigitsMLP()
    variables = _timed(
        print_fn,
        f"training the target {type(model).__name__} on {len(train.y)} digits",
        lambda: examples.train_classifier(model, train, seed=seed),
    )
    logits_fn = jaxadv.from_flax(model, variables)
    surrogate_vars = _timed(
        print_fn,
        f"training a surrogate {type(surrogate).__name__} (for the transfer attack)",
        lambda: examples.train_classifier(surrogate, train, seed=seed + 1, epochs=15),
    )
    surrogate_fn = jaxadv.from_flax(surrogate, surrogate_vars)

    key = jax.random.key(seed)
    k_table, k_targets, k_hsj = jax.random.split(key, 3)
    clean = examples.accuracy(logits_fn, x, y)
    table: dict[str, list[float]] = {"clean": [clean] * len(eps_values)}
    # One copy of the test set per eps value, attacked in one call with a per-example eps.
    m, n_eps = len(y), len(eps_values)
    x_rep, y_rep = np.concatenate([x] * n_eps), np.concatenate([y] * n_eps)
    eps_rep = np.repeat(np.asarray(eps_values, np.float32), m)

    def per_eps(values: Any) -> list[np.ndarray]:
        return list(np.asarray(values).reshape(n_eps, m, *np.shape(values)[1:]))

    attacks = _attack_table(logits_fn, surrogate_fn, x_rep, y_rep, steps=steps, queries=queries, key=k_table)
    adversarial: dict[str, list[np.ndarray]] = {}
    for i, (name, attack) in enumerate(attacks.items(), 1):
        label = f"[{i}/{len(attacks)}] {name}"
        result = _timed(print_fn, label, functools.partial(attack, eps_rep))
        adversarial[name] = per_eps(result)
        table[name] = [examples.accuracy(logits_fn, xa, y) for xa in adversarial[name]]

    # Targeted: how often the model is steered to the chosen class.
    targets = {
        "least-likely class": jaxadv.least_likely(logits_fn, x),
        "random class": jaxadv.random_targets(k_targets, y, 10),
    }
    targeted: dict[str, list[float]] = {}
    for name, t in targets.items():
        t_rep = np.concatenate([np.asarray(t)] * n_eps)

        def attack_to(t_rep: np.ndarray = t_rep) -> Any:
            return jaxadv.bim(logits_fn, x_rep, t_rep, eps=eps_rep, steps=steps, targeted=True)

        x_t = _timed(print_fn, f"targeted BIM-{steps} to the {name}", attack_to)
        hit = np.asarray(jaxadv.predict(logits_fn, x_t)) == t_rep
        targeted[f"BIM-{steps} to the {name}"] = [float(h.mean()) for h in per_eps(hit)]

    # Minimal-perturbation attacks: no eps; report the L2 size of what they find.
    xs, ys = x[:minimal_examples], y[:minimal_examples]
    minimal_attacks: dict[str, Callable[[], Any]] = {
        "DeepFool (L2)": lambda: jaxadv.deepfool(logits_fn, xs, ys, steps=steps),
        "Carlini-Wagner L2": lambda: jaxadv.cw_l2(
            logits_fn, xs, ys, steps=100, binary_search_steps=4, initial_const=1.0
        ),
        f"HopSkipJump ({queries} label queries)": lambda: jaxadv.hop_skip_jump(
            logits_fn, xs, ys, key=k_hsj, queries=queries, norm="l2", init_evals=20, max_evals=100
        ),
    }
    minimal: dict[str, np.ndarray] = {}
    minimal_rows: dict[str, list[str]] = {}
    for name, fn in minimal_attacks.items():
        xa = np.asarray(_timed(print_fn, name, fn))
        fooled = np.asarray(jaxadv.predict(logits_fn, xa)) != ys
        size = np.sqrt(np.sum((xa - xs).reshape(len(xs), -1) ** 2, axis=1))
        size = np.where(fooled, size, np.inf)
        minimal[name] = size
        finite = size[np.isfinite(size)]
        med = f"{np.median(finite):.3f}" if finite.size else "-"
        minimal_rows[name] = [f"{fooled.mean():.1%}", med]

    columns = [f"eps={e:g}" for e in eps_values]
    lines = [""]
    lines += _format_table(
        "accuracy (L-inf)", columns, {k: [f"{a:.3f}" for a in v] for k, v in table.items()}
    )
    lines += [""]
    lines += _format_table(
        "target reached", columns, {k: [f"{h:.1%}" for h in v] for k, v in targeted.items()}
    )
    if minimal_rows:
        lines += [""]
        title = f"minimal L2 ({len(xs)} digits)"
        lines += _format_table(title, ["fooled", "median L2"], minimal_rows)
    for line in lines:
        print_fn(line)

    if out is not None:
        out = Path(out)
        mid = len(eps_values) // 2
        pgd_adv = np.asarray(adversarial[f"PGD-{steps}"][mid])
        pred_clean = np.asarray(jaxadv.predict(logits_fn, x))
        pred_adv = np.asarray(jaxadv.predict(logits_fn, pgd_adv))
        pick = np.nonzero((pred_clean == y) & (pred_adv != y))[0][:8]
        grid = (x[pick], pgd_adv[pick], pred_clean[pick], pred_adv[pick])
        name = f"PGD-{steps} at eps={eps_values[mid]:g}"
        written = _write_figures(out, eps_values, table, grid, minimal, name)
        results = {
            "eps": eps_values,
            "accuracy": table,
            "target_reached": targeted,
            "minimal_perturbation": {
                k: {"fooled": float(np.isfinite(v).mean()), "l2": [float(a) for a in v]}
                for k, v in minimal.items()
            },
        }
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print_fn("")
        print_fn(f"wrote {', '.join(str(p) for p in [*written, out / 'results.json'])}")
    print_fn(f"total time {time.perf_counter() - t_start:.0f}s")
    return table
