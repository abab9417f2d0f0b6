"""Attack suites for :func:`jaxadv.evaluate`.

A suite is a sequence of :class:`SuiteAttack`: a name and a function
``run(logits_fn, x, y, *, key, eps, norm, bounds) -> x_adv`` (or a result with an
``x_adv`` attribute, and optionally ``queries``). Success is always decided by
re-predicting the returned examples, never by an attack's own flag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from jaxadv.typing import Norm

AttackFn = Callable[..., Any]


class SuiteAttack(NamedTuple):
    """One member of a suite.

    Attributes:
      name: shown in reports.
      run: ``run(logits_fn, x, y, *, key, eps, norm, bounds)``.
      black_box: whether the attack uses only the model's outputs (used by the
        gradient-masking checks).
    """

    name: str
    run: AttackFn
    black_box: bool = False


def _apgd_ce(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    import jaxadv

    return jaxadv.apgd(logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, loss="ce", bounds=bounds)


def _apgd_t(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    import jaxadv

    return jaxadv.apgd_targeted(logits_fn, x, y, key=key, eps=eps, steps=100, norm=norm, bounds=bounds)


def _square(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    import jaxadv

    return jaxadv.square(logits_fn, x, y, key=key, eps=eps, queries=5000, norm=norm, bounds=bounds)


def _pgd(steps: int, restarts: int = 1) -> AttackFn:
    def run(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
        import jaxadv

        return jaxadv.pgd(logits_fn, x, y, key=key, eps=eps, steps=steps, norm=norm, bounds=bounds)

    return run


def _fgsm(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    import jaxadv

    del key
    return jaxadv.fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=bounds)


def _pgd_cw(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Norm, bounds: Any) -> Any:
    import jaxadv

    return jaxadv.pgd(
        logits_fn, x, y, key=key, eps=eps, steps=50, norm=norm, bounds=bounds, loss=jaxadv.cw_margin
    )


#: Named attacks usable in custom suites by name.
ATTACKS: dict[str, SuiteAttack] = {
    "apgd-ce": SuiteAttack("apgd-ce", _apgd_ce),
    "apgd-t": SuiteAttack("apgd-t", _apgd_t),
    "square": SuiteAttack("square", _square, black_box=True),
    "fgsm": SuiteAttack("fgsm", _fgsm),
    "pgd-20": SuiteAttack("pgd-20", _pgd(20)),
    "pgd-50-cw": SuiteAttack("pgd-50-cw", _pgd_cw),
}

#: Built-in suites. ``"standard"`` mirrors AutoAttack's standard version
#: (APGD-CE, APGD-T, Square); ``"fast"`` is a quick first look.
SUITES: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "square"),
    "fast": ("pgd-20", "pgd-50-cw"),
}


def resolve_suite(suite: str | Sequence[str | SuiteAttack]) -> list[SuiteAttack]:
    """A suite name, or a list of attack names and :class:`SuiteAttack`, as a list."""
    if isinstance(suite, str):
        if suite not in SUITES:
            raise ValueError(f"suite must be one of {sorted(SUITES)} or a list of attacks, got {suite!r}")
        suite = SUITES[suite]
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
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names in a suite must be unique, got {names}")
    return out
