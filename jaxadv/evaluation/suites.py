"""Attack suites for :func:`jaxadv.evaluate`.

A suite is a sequence of :class:`SuiteAttack`: a name and a function
``run(logits_fn, x, y, *, key, eps, norm, bounds) -> x_adv`` (or a result with an
``x_adv`` attribute, and optionally ``queries``). Success is always decided by
re-predicting the returned examples, never by an attack's own flag.

The ``"standard"`` suite mirrors AutoAttack's standard version for the norm:

* L-inf and L2: APGD-CE, APGD-T (9 target classes), Square (5000 queries);
  AutoAttack's FAB-T is not in the library yet.
* L1 (Croce & Hein, 2021): APGD-CE with 5 restarts and APGD-T, both in their
  L1 version with the shrinking radius (``shrinking_eps``), 100 steps each.
  AutoAttack's L1 version also runs FAB-T and the L1 Square attack, which the
  library does not have yet: where those two would add successes, this suite
  reports a higher robust accuracy than AutoAttack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from jaxadv.attacks.apgd import apgd, apgd_targeted
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
    """

    name: str
    run: AttackFn
    black_box: bool = False
    norms: tuple[str, ...] | None = None


def _apgd_ce(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    # AutoAttack's configurations: one run for L-inf/L2, five with the shrinking radius for L1.
    l1 = norm == "l1"
    return apgd(
        logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, loss="ce", bounds=bounds,
        num_restarts=5 if l1 else 1, shrinking_eps=l1,
    )  # fmt: skip


def _apgd_t(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    return apgd_targeted(
        logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, bounds=bounds, shrinking_eps=norm == "l1"
    )


def _square(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    # With its query counts, which the evaluation reports.
    return square(logits_fn, x, y, key=key, eps=eps, queries=5000, norm=norm, bounds=bounds, return_info=True)


def _pgd(steps: int, restarts: int = 1) -> AttackFn:
    def run(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
        return pgd(logits_fn, x, y, key=key, eps=eps, steps=steps, norm=norm, bounds=bounds)

    return run


def _fgsm(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    del key
    return fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=bounds)


def _pgd_cw(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    return pgd(logits_fn, x, y, key=key, eps=eps, steps=50, norm=norm, bounds=bounds, loss=cw_margin)


#: Named attacks usable in custom suites by name.
ATTACKS: dict[str, SuiteAttack] = {
    "apgd-ce": SuiteAttack("apgd-ce", _apgd_ce, norms=("linf", "l2", "l1")),
    "apgd-t": SuiteAttack("apgd-t", _apgd_t, norms=("linf", "l2", "l1")),
    "square": SuiteAttack("square", _square, black_box=True, norms=("linf", "l2")),
    "fgsm": SuiteAttack("fgsm", _fgsm),
    "pgd-20": SuiteAttack("pgd-20", _pgd(20)),
    "pgd-50-cw": SuiteAttack("pgd-50-cw", _pgd_cw),
}

#: Built-in suites. ``"standard"`` mirrors AutoAttack's standard version
#: (APGD-CE, APGD-T, Square; for L1 see :data:`SUITES_BY_NORM`); ``"fast"`` is
#: a quick first look.
SUITES: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "square"),
    "fast": ("pgd-20", "pgd-50-cw"),
}

#: Built-in suites whose members depend on the norm, by norm: with ``norm="l1"``
#: ``"standard"`` is AutoAttack's L1 members that the library has (see the
#: module docstring).
SUITES_BY_NORM: dict[str, dict[str, tuple[str, ...]]] = {
    "l1": {"standard": ("apgd-ce", "apgd-t")},
}


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
