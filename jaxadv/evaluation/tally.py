"""The per-example results of an evaluation so far, gathered into its result.

:func:`tally` is the optax-style triple ``init`` / ``update`` / ``finalize`` over
:class:`BatchResult` batches (from :func:`~jaxadv.evaluation.evaluate_batch` in a
user's loop, or from the driver of :func:`jaxadv.evaluate`): ``update`` returns a
new state and never changes the one it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxadv.evaluation.diagnostics import NAMES as INDICATOR_NAMES
from jaxadv.evaluation.diagnostics import Indicators
from jaxadv.evaluation.kernel import BatchResult
from jaxadv.evaluation.layout import _Layout
from jaxadv.evaluation.result import EvaluationResult
from jaxadv.evaluation.suites import SuiteAttack

#: The indicators ``evaluate(diagnose=True)`` computes (all but ``transfer_failure``,
#: which needs the surrogate an attack ran on).
_DIAGNOSED = INDICATOR_NAMES[:5]


class TallyState(NamedTuple):
    """The batches added so far: per-example arrays as tuples of NumPy parts, and
    per-attack counts. Immutable: :func:`tally`'s ``update`` returns a new state."""

    fooled_by: tuple[np.ndarray, ...]
    perturbation_norm: tuple[np.ndarray, ...]
    queries: tuple[np.ndarray, ...]
    x_adv: tuple[np.ndarray, ...]
    indicators: tuple[np.ndarray, ...]  # [b, 5] bool parts
    non_finite: np.ndarray  # [k]
    non_finite_clean: int
    outside: np.ndarray  # [k]
    seconds: np.ndarray  # [k]
    batch_size: int  # the largest batch added
    sessions: int


class Tally(NamedTuple):
    """``init(start=None) -> state``, ``update(state, batch, indicators=None) -> state``,
    ``finalize(state, *, wall_seconds=0.0) -> EvaluationResult``; see :func:`tally`."""

    init: Callable[..., TallyState]
    update: Callable[..., TallyState]
    finalize: Callable[..., EvaluationResult]


def _indicator_flags(indicators: Indicators | Mapping[str, Any] | np.ndarray) -> np.ndarray:
    """``[n, 5]`` bool: the indicators ``evaluate(diagnose=True)`` keeps, in the order of
    ``_DIAGNOSED``, from an :class:`Indicators`, a result's ``indicators`` mapping, or
    such an array already."""
    if isinstance(indicators, Indicators):
        return np.stack([np.asarray(getattr(indicators, k)) for k in _DIAGNOSED], axis=1)
    if isinstance(indicators, Mapping):
        return np.stack([np.asarray(indicators[k]) for k in _DIAGNOSED], axis=1)
    return np.asarray(indicators, bool)


def tally(
    attacks: Sequence[str | SuiteAttack],
    *,
    eps: float,
    norm: str,
    keep_adversarial: bool = False,
    diagnose: bool = False,
) -> Tally:
    """Gather :class:`BatchResult` batches into an :class:`EvaluationResult`.

    Args:
      attacks: the suite's members (or their names), in order.
      eps, norm: the threat model, recorded in the result.
      keep_adversarial: keep the batches' ``x_adv`` in ``result.x_adv``.
      diagnose: ``update`` takes each batch's indicators of attack failure
        (:func:`jaxadv.evaluation.indicators`, or the driver's ``[b, 5]`` flags),
        kept in ``result.indicators``.

    Returns:
      A :class:`Tally`. ``init(start=None)``: an empty state, or one holding the
      examples of an earlier result ``start`` (a resumed run). ``update(state,
      batch, indicators=None)``: the state with the batch's examples after those
      before (arrays are fetched to the host). ``finalize(state, *,
      wall_seconds=0.0)``: the :class:`EvaluationResult` of the examples so far,
      with ``batch_size`` the largest batch added. Outside candidates
      (``BatchResult.outside``) become a warning of the result.
    """
    names = [a.name if isinstance(a, SuiteAttack) else str(a) for a in attacks]
    k = len(names)
    if not isinstance(keep_adversarial, bool) or not isinstance(diagnose, bool):
        raise ValueError("keep_adversarial and diagnose must be True or False")

    def init(start: EvaluationResult | None = None) -> TallyState:
        if start is None:
            zeros = np.zeros(k, np.int64)
            return TallyState((), (), (), (), (), zeros, 0, zeros, np.zeros(k, np.float64), 0, 1)
        if list(start.attacks) != names:
            raise ValueError(f"start holds the attacks {start.attacks}, this tally {names}")
        flags: tuple[np.ndarray, ...] = ()
        if diagnose and start.indicators is not None:
            flags = (_indicator_flags(start.indicators),)
        return TallyState(
            fooled_by=(start.fooled_by,),
            perturbation_norm=(start.perturbation_norm,),
            queries=(start.queries,),
            x_adv=(),
            indicators=flags,
            non_finite=np.asarray([start.non_finite.get(n, 0) for n in names], np.int64),
            non_finite_clean=int(start.non_finite_clean),
            outside=np.zeros(k, np.int64),
            seconds=np.asarray([start.seconds.get(n, 0.0) for n in names], np.float64),
            batch_size=int(start.batch_size or 0),
            sessions=start.sessions + 1,
        )

    def update(
        state: TallyState, batch: BatchResult, indicators: Indicators | np.ndarray | None = None
    ) -> TallyState:
        if diagnose and indicators is None:
            raise ValueError("this tally diagnoses (diagnose=True): pass the batch's indicators")
        fooled_by = np.asarray(batch.fooled_by, np.int32)
        n = fooled_by.shape[0]
        if np.shape(batch.non_finite) != (k,):
            raise ValueError(
                f"the batch has results of {np.shape(batch.non_finite)[0]} attacks, the tally {k}"
            )
        flags = state.indicators
        if diagnose and indicators is not None:
            flags = flags + (_indicator_flags(indicators),)
        seconds = state.seconds if batch.seconds is None else state.seconds + np.asarray(batch.seconds)
        return state._replace(
            fooled_by=state.fooled_by + (fooled_by,),
            perturbation_norm=state.perturbation_norm + (np.asarray(batch.perturbation_norm, np.float32),),
            queries=state.queries + (np.asarray(batch.queries, np.int64),),
            x_adv=state.x_adv + ((np.asarray(batch.x_adv),) if keep_adversarial else ()),
            indicators=flags,
            non_finite=state.non_finite + np.asarray(batch.non_finite, np.int64),
            non_finite_clean=state.non_finite_clean + int(batch.non_finite_clean),
            outside=state.outside + np.asarray(batch.outside, np.int64),
            seconds=seconds,
            batch_size=max(state.batch_size, n),
        )

    def finalize(state: TallyState, *, wall_seconds: float = 0.0) -> EvaluationResult:
        result = _finalize(state, names, eps, norm, diagnose, wall_seconds=wall_seconds)
        result.warnings.extend(_non_finite_warnings(result))
        return result

    return Tally(init, update, finalize)


def _non_finite_warnings(result: EvaluationResult) -> list[str]:
    out = [
        f"attack {name!r} returned {count} non-finite candidate(s) (NaN or inf in the example or in the "
        "model's logits on it); each counted as a failed attack, so its example stayed robust against "
        f"{name!r}: the robust accuracy may be overestimated"
        for name, count in result.non_finite.items()
        if count
    ]
    if result.non_finite_clean:
        out.append(
            f"the model returned non-finite logits on {result.non_finite_clean} clean example(s); "
            "they were counted as misclassified"
        )
    return out


def _finalize(
    state: TallyState,
    names: list[str],
    eps: float,
    norm: str,
    diagnose: bool,
    *,
    wall_seconds: float,
    batch_size: int | None = None,
    layout: _Layout | None = None,
) -> EvaluationResult:
    """The result so far; with ``layout``, every process's examples gathered (a collective)."""

    def joined(parts: tuple[np.ndarray, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    fooled_by = joined(state.fooled_by, np.int32)
    norms = joined(state.perturbation_norm, np.float32)
    queries = joined(state.queries, np.int64)
    advs = np.concatenate(state.x_adv) if state.x_adv else None
    flags = np.concatenate(state.indicators) if state.indicators else np.zeros((0, len(_DIAGNOSED)), bool)
    non_finite, clean, seconds = state.non_finite, state.non_finite_clean, state.seconds
    if layout is not None and layout.processes > 1:
        # The only exchange of results between processes: once, at the end.
        if layout.agree(-len(fooled_by)) != -layout.agree(len(fooled_by)):
            raise ValueError("every process must evaluate the same number of examples")
        fooled_by, norms, queries = (layout.gather(a) for a in (fooled_by, norms, queries))
        advs = None if advs is None else layout.gather(advs)
        flags = layout.gather(flags)
        k = len(names)
        counts = layout.gather(np.append(non_finite, clean)).reshape(-1, k + 1).sum(axis=0)
        non_finite, clean = counts[:k], int(counts[k])
        seconds = layout.gather(seconds).reshape(-1, k).max(axis=0)  # wall time: the slowest process
        wall_seconds = float(layout.gather(np.asarray([wall_seconds], np.float64)).max())
    result = EvaluationResult(
        eps=float(eps),
        norm=norm,
        attacks=list(names),
        fooled_by=fooled_by,
        perturbation_norm=norms,
        queries=queries,
        x_adv=advs,
        non_finite={n: int(c) for n, c in zip(names, non_finite, strict=True)},
        non_finite_clean=int(clean),
        seconds={n: float(t) for n, t in zip(names, seconds, strict=True)},
        batch_size=int(batch_size if batch_size is not None else state.batch_size),
        wall_seconds=float(wall_seconds),
        sessions=state.sessions,
        indicators={k: flags[:, i] for i, k in enumerate(_DIAGNOSED)} if diagnose else None,
    )
    result.warnings.extend(
        f"attack {n!r} returned {int(c)} candidate(s) outside the threat model; each counted as a failed "
        "attack (a bug of that attack: report it)"
        for n, c in zip(names, state.outside, strict=True)
        if c
    )
    return result
