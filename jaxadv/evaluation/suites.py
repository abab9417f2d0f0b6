"""Attack suites for :func:`jaxadv.evaluate`.

A suite is a sequence of :class:`SuiteAttack`: a name and a function
``run(logits_fn, x, y, *, key, eps, norm, bounds) -> x_adv`` (or an
:class:`jaxadv.AttackResult`, whose ``queries`` are then counted). Success is
always decided by re-predicting the returned examples, never by an attack's own
flag. The built-in suites reproduce AutoAttack's versions (Croce & Hein, 2020),
with its iterations, restarts and target counts; each member runs on the
examples still robust after the members before it:

* ``"standard"``, L-inf and L2: APGD-CE (100 steps), APGD-T (100 steps, 9 target
  classes), FAB-T (100 steps, 9 target classes), Square (5000 queries).
* ``"standard"``, L1 ("Mind the box", Croce & Hein, 2021): APGD-CE (5 restarts)
  and APGD-T (5 target classes), both in L1 with the shrinking radius
  (``shrinking_eps``), then FAB-T (9 target classes) and the L1 Square attack
  (5000 queries, ``p_init=0.8``), as AutoAttack's L1 version.
* ``"plus"``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square
  (5000 queries), APGD-T (9 target classes), FAB-T (9 target classes).
* ``"rand"``, for randomised defences: APGD-CE and APGD-DLR, each with the
  expectation of the gradient over 20 draws (EOT) per step, one restart. With
  ``evaluate(..., randomized=True)`` the model is ``logits_fn(x, key)`` and
  every draw gets its own key; a deterministic model is accepted too (as in
  AutoAttack), where the 20 draws are equal.
* ``"fast"``: PGD-20 with cross-entropy, then PGD-50 with the CW margin (every norm).

On a model with fewer classes than the target count plus one, the targeted
members attack all ``C - 1`` other classes (the attacks themselves refuse a
``num_target_classes`` above ``C - 1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxadv.attacks.apgd import apgd, apgd_targeted
from jaxadv.attacks.fab import fab, fab_targeted
from jaxadv.attacks.iterative import pgd
from jaxadv.attacks.single_step import fgsm
from jaxadv.attacks.square import square
from jaxadv.losses import cw_margin
from jaxadv.typing import NORMS, Norm
from jaxadv.validation import check_norm

AttackFn = Callable[..., Any]


class SuiteAttack(NamedTuple):
    """One member of a suite.

    Attributes:
      name: shown in reports.
      run: ``run(logits_fn, x, y, *, key, eps, norm, bounds)``.
      black_box: whether the attack uses only the model's outputs (used by the
        gradient-masking checks).
      norms: the norms the attack supports; :func:`jaxadv.evaluate` refuses a
        suite with a member that does not support the requested norm before
        attacking anything. ``None``: every norm.
      randomized: ``run`` also takes ``randomized=True`` and then attacks a
        randomised model ``logits_fn(x, key)`` (``evaluate(..., randomized=True)``
        refuses a suite with a member that cannot).
      traced: ``run`` also takes ``trace=True`` and then returns an
        :class:`jaxadv.AttackResult` whose ``trace`` holds the run's
        :class:`jaxadv.compose.TraceFlags`: ``evaluate(..., diagnose=True)``
        reads its indicators of attack failure off them.
    """

    name: str
    run: AttackFn
    black_box: bool = False
    norms: tuple[str, ...] | None = None
    randomized: bool = False
    traced: bool = False


def _apgd_ce(
    logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any, trace: bool = False
) -> Any:
    # AutoAttack's configurations: one run for L-inf/L2, five with the shrinking radius for L1.
    l1 = norm == "l1"
    return apgd(
        logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, loss="ce", bounds=bounds,
        num_restarts=5 if l1 else 1, shrinking_eps=l1, return_info=trace, trace=trace,
    )  # fmt: skip


def _targets(logits_fn: Any, x: Any, wanted: int) -> int:
    """``wanted`` target classes, or all ``C - 1`` other classes of a model with fewer."""
    classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, jnp.float32)).shape[-1]
    return max(1, min(wanted, classes - 1))


def _apgd_t(
    logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any, trace: bool = False
) -> Any:
    # AutoAttack's L1 version attacks 5 target classes, the others 9.
    l1 = norm == "l1"
    return apgd_targeted(
        logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, bounds=bounds, shrinking_eps=l1,
        num_target_classes=_targets(logits_fn, x, 5 if l1 else 9), return_info=trace, trace=trace,
    )  # fmt: skip


def _apgd_restarts(loss: str, restarts: int) -> AttackFn:
    def run(
        logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any, trace: bool = False
    ) -> Any:
        return apgd(
            logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, loss=loss, bounds=bounds,
            num_restarts=restarts, return_info=trace, trace=trace,
        )  # fmt: skip

    return run


def _apgd_eot(loss: str) -> AttackFn:
    # AutoAttack's "rand" version: one restart, the gradient averaged over 20 draws.
    def run(
        logits_fn: Any,
        x: Any,
        y: Any,
        *,
        key: Any,
        eps: Any,
        norm: Norm,
        bounds: Any,
        randomized: bool = False,
    ) -> Any:
        return apgd(
            logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, loss=loss, bounds=bounds,
            num_samples=20, randomized=randomized,
        )  # fmt: skip

    return run


def _fab_t(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    # AutoAttack's FAB has no final search (search_steps=0): the same algorithm.
    return fab_targeted(
        logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, bounds=bounds,
        num_target_classes=_targets(logits_fn, x, 9), search_steps=0,
    )  # fmt: skip


def _fab(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    return fab(
        logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, bounds=bounds, num_restarts=5, search_steps=0
    )


def _square(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    # With its query counts, which the evaluation reports. Square's default p_init
    # per norm (0.8 for L-inf and L1, as AutoAttack; the paper's 0.1 for L2).
    return square(logits_fn, x, y, key=key, eps=eps, queries=5000, norm=norm, bounds=bounds, return_info=True)


def _pgd(steps: int, restarts: int = 1) -> AttackFn:
    def run(
        logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any, trace: bool = False
    ) -> Any:
        return pgd(
            logits_fn, x, y, key=key, eps=eps, steps=steps, norm=norm, bounds=bounds, return_info=trace,
            trace=trace,
        )  # fmt: skip

    return run


def _fgsm(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    del key
    return fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=bounds)


def _pgd_cw(
    logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any, trace: bool = False
) -> Any:
    return pgd(
        logits_fn, x, y, key=key, eps=eps, steps=50, norm=norm, bounds=bounds, loss=cw_margin,
        return_info=trace, trace=trace,
    )  # fmt: skip


#: Named attacks usable in custom suites by name.
ATTACKS: dict[str, SuiteAttack] = {
    "apgd-ce": SuiteAttack("apgd-ce", _apgd_ce, norms=("linf", "l2", "l1"), traced=True),
    "apgd-t": SuiteAttack("apgd-t", _apgd_t, norms=("linf", "l2", "l1"), traced=True),
    "fab-t": SuiteAttack("fab-t", _fab_t, norms=("linf", "l2", "l1")),
    "apgd-ce-x5": SuiteAttack("apgd-ce-x5", _apgd_restarts("ce", 5), norms=("linf", "l2"), traced=True),
    "apgd-dlr-x5": SuiteAttack("apgd-dlr-x5", _apgd_restarts("dlr", 5), norms=("linf", "l2"), traced=True),
    "fab-x5": SuiteAttack("fab-x5", _fab, norms=("linf", "l2", "l1")),
    "apgd-ce-eot20": SuiteAttack(
        "apgd-ce-eot20", _apgd_eot("ce"), norms=("linf", "l2", "l1"), randomized=True
    ),
    "apgd-dlr-eot20": SuiteAttack(
        "apgd-dlr-eot20", _apgd_eot("dlr"), norms=("linf", "l2", "l1"), randomized=True
    ),
    "square": SuiteAttack("square", _square, black_box=True, norms=("linf", "l2", "l1")),
    "fgsm": SuiteAttack("fgsm", _fgsm),
    "pgd-20": SuiteAttack("pgd-20", _pgd(20), traced=True),
    "pgd-50-cw": SuiteAttack("pgd-50-cw", _pgd_cw, traced=True),
}

#: Built-in suites (see the module docstring): AutoAttack's ``"standard"``,
#: ``"plus"`` and ``"rand"`` versions (for L1 see :data:`SUITES_BY_NORM`), and
#: ``"fast"``, a quick first look.
SUITES: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce-x5", "apgd-dlr-x5", "fab-x5", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce-eot20", "apgd-dlr-eot20"),
    "fast": ("pgd-20", "pgd-50-cw"),
}

#: Built-in suites whose members depend on the norm, by norm. None today: the
#: members of ``"standard"`` take AutoAttack's L1 configurations themselves
#: (restarts, shrinking radius, target counts), and Square has an L1 version.
SUITES_BY_NORM: dict[str, dict[str, tuple[str, ...]]] = {}


def suite_members(name: str, norm: str | None = None) -> tuple[str, ...]:
    """The attack names of the built-in suite ``name`` for ``norm`` (``None``: the
    L-inf/L2 members)."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)} or a list of attacks, got {name!r}")
    if norm is not None:
        return SUITES_BY_NORM.get(check_norm(norm), {}).get(name, SUITES[name])
    return SUITES[name]


def resolve_suite(suite: str | Sequence[str | SuiteAttack], norm: str | None = None) -> list[SuiteAttack]:
    """A suite name, or a list of attack names and :class:`SuiteAttack`, as a list.

    ``norm`` picks a built-in suite's members for that norm (:data:`SUITES_BY_NORM`);
    ``None`` gives the members of :data:`SUITES`.
    """
    if isinstance(suite, str):
        suite = suite_members(suite, norm)
    out: list[SuiteAttack] = []
    for item in suite:
        if isinstance(item, SuiteAttack):
            out.append(item)
        elif isinstance(item, str):
            if item not in ATTACKS:
                raise ValueError(f"unknown attack {item!r}; known: {sorted(ATTACKS)}")
            out.append(ATTACKS[item])
        else:
            raise ValueError(f"suite members must be names or SuiteAttack, got {type(item).__name__}")
    if not out:
        raise ValueError("the suite is empty")
    for a in out:
        if a.norms is not None and any(n not in NORMS for n in a.norms):
            raise ValueError(f"attack {a.name!r}: norms must be among {NORMS}, got {a.norms}")
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names in a suite must be unique, got {names}")
    return out


def check_suite_norm(suite: str | Sequence[str | SuiteAttack], attacks: list[SuiteAttack], norm: str) -> None:
    """Refuse a suite with a member that does not support ``norm``, naming the suites that do.

    Raises:
      ValueError: naming the attacks that cannot run ``norm`` and the built-in
        suites whose every member can.
    """
    unsupported = [a for a in attacks if a.norms is not None and norm not in a.norms]
    if not unsupported:
        return
    usable = [
        name
        for name in SUITES
        if name != suite and all(_supports(ATTACKS[m], norm) for m in suite_members(name, norm))
    ]
    label = f"suite {suite!r}" if isinstance(suite, str) else "the suite"
    names = ", ".join(f"{a.name} ({'/'.join(a.norms or ())})" for a in unsupported)
    hint = " or ".join(f"suite={s!r}" for s in usable) or "a list of attacks that support it"
    raise ValueError(f"{label} cannot run norm={norm!r}: {names} do not support it; use {hint}")


def _supports(attack: SuiteAttack, norm: str) -> bool:
    return attack.norms is None or norm in attack.norms
