r"""One loop body for every composed gradient attack.

An :class:`Attack` is a gradient source (:mod:`jaxadv.compose.sources`), an
update rule (:mod:`jaxadv.compose.updates`), a threat model (the norm, the
radius ``eps`` and the box ``bounds``, with an optional random start) and
optional bookkeeping (:mod:`jaxadv.compose.bookkeeping`). Each step is

.. math::
    g_t = \text{source}(x_t^{\text{look}}),\quad
    (d_t, s_{t+1}) = \text{rule}(g_t, s_t),\quad
    x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}(x_t + \alpha\, d_t),

run by :func:`jaxadv.engine.iterate` (one ``fori_loop`` under a transformation,
one cached compiled program for a direct call). An example whose logits or
gradient are not finite at :math:`x_t` goes back to :math:`x` and keeps its
rule state.

``Attack`` is a frozen dataclass registered as a pytree, and callable with the
library's attack signature::

    attack = compose.Attack(compose.eot(num_samples=8), compose.momentum(0.9), norm="l2")
    x_adv = attack(logits_fn, x, y, key=key, eps=0.5, steps=20)

The parts' array hyperparameters are traced leaves, so new values (a decay,
``eps``, the model's parameters) reuse the compiled program.

With ``count_queries=True`` the loop keeps the books of a score-based attack
(:class:`jaxadv.compose.QueryCount`): the clean input is the first query,
every step evaluates its new iterate once (besides the source's own
evaluations), an example stops at its first success, and the queries are
returned with ``return_info``. :func:`jaxadv.spsa` and :func:`jaxadv.nes` are
this loop with a :class:`jaxadv.compose.FiniteDifference` source.

With ``trace=True`` the loop also keeps a :class:`jaxadv.compose.Trace` per
example (its margin, success and gradient at every iterate, summed up as it
goes, from the values the step computes anyway; a source that returns no logits
at the iterate, such as :class:`jaxadv.compose.EOT`, or a look-ahead rule, costs
one more forward pass per step), and
``return_info`` carries its :class:`jaxadv.compose.TraceFlags` in
``AttackResult.trace``: what :func:`jaxadv.evaluate` reads its indicators of
attack failure from.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxadv._core.problem import Problem, check_finite_step, check_step_size
from jaxadv._core.randomised import EVAL_FOLD, loop_problem, prepare_problem, source_model
from jaxadv._core.rows import select_rows
from jaxadv.compose.bookkeeping import (
    BestLoss,
    Outcome,
    QueryCount,
    TraceFlags,
    charge,
    init_best,
    init_best_loss,
    init_trace,
    objective,
    record,
    record_iterate,
    record_loss,
    select,
    trace_flags,
)
from jaxadv.compose.sources import LossGradient, _pytree, check_parts
from jaxadv.compose.state import LoopState, Operands, Static
from jaxadv.compose.step_sizes import Fixed, Progress
from jaxadv.compose.updates import Context, Nesterov, Steepest
from jaxadv.engine import iterate
from jaxadv.keys import fold_rows, row_keys, split_rows
from jaxadv.losses import finite_rows
from jaxadv.success import as_returned, stop_mask
from jaxadv.threat_models import mask_blocked, project_to_feasible, random_feasible, step_along
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, Norm, PRNGKey
from jaxadv.validation import check_key, check_norm, check_steps

__all__ = [
    "Attack",
    "LoopState",
    "Operands",
    "attack_step",
    "run_books",
    "run_from",
    "run_traced",
    "run_with_queries",
]


@_pytree(
    data=("source", "rule", "schedule"),
    meta=(
        "norm",
        "random_start",
        "keep_best",
        "early_stop",
        "l1_sparsity",
        "randomized",
        "step_factor",
        "count_queries",
        "trace",
    ),
)
@dataclasses.dataclass(frozen=True)
class Attack:
    """An iterative gradient attack composed of parts (see the module docstring).

    Attributes:
      source: a gradient source, e.g. ``loss_gradient()``, ``eot(...)``.
      rule: an update rule, e.g. ``steepest()``, ``momentum(1.0)``.
      schedule: a step-size part (:mod:`jaxadv.compose.step_sizes`): ``fixed()``
        (default) or ``checkpoint_halving()``, APGD's halving with restarts
        from the highest-loss iterate (its objective is the source's loss at
        each iterate, so it needs a rule that takes the gradient at the iterate
        itself, not a look-ahead point).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``: the ball, and the steepest direction.
      random_start: start from a uniform point of the ball (needs ``key``).
      keep_best: round iterates to the caller's dtype, test each for success and
        return the best one (:mod:`jaxadv.compose.bookkeeping`); otherwise the
        last iterate is returned. With a step-size part that restarts (it keeps
        the highest-loss iterate), an example never fooled gets that iterate.
      early_stop: with ``keep_best``, freeze an example once it is adversarial.
      l1_sparsity: fraction of coordinates an L1 step moves.
      randomized: the model is called as ``logits_fn(x, key)`` with a fresh key
        per draw (dropout left on, a randomised defence); use with :class:`EOT`.
      step_factor: default step size is ``step_factor * eps / steps``.
      count_queries: keep the books of a score-based attack (see the module
        docstring); needs a source that states its evaluations per call
        (``queries``, as :class:`jaxadv.compose.FiniteDifference` does), and
        excludes ``keep_best`` and ``random_start``.
      trace: keep a :class:`jaxadv.compose.Trace` per example (see the module
        docstring); its flags come back in ``AttackResult.trace`` with
        ``return_info``. Excludes ``count_queries``.
    """

    source: Any = None
    rule: Any = None
    norm: Norm = "linf"
    random_start: bool = False
    keep_best: bool = False
    early_stop: bool = False
    l1_sparsity: float = 0.05
    randomized: bool = False
    step_factor: float = 2.5
    count_queries: bool = False
    schedule: Any = None
    trace: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        if self.source is None:
            object.__setattr__(self, "source", LossGradient())
        if self.rule is None:
            object.__setattr__(self, "rule", Steepest())
        if self.schedule is None:
            object.__setattr__(self, "schedule", Fixed())
        if not isinstance(self.schedule, Fixed):
            if self.count_queries:
                raise ValueError("a step-size schedule cannot be combined with count_queries")
            if isinstance(self.rule, Nesterov):
                raise ValueError(
                    "a step-size schedule reads the loss at each iterate: the Nesterov rule takes its "
                    "gradient at a look-ahead point instead"
                )
        if not 0.0 < self.l1_sparsity <= 1.0:
            raise ValueError(f"l1_sparsity must be in (0, 1], got {self.l1_sparsity}")
        if not (isinstance(self.step_factor, (int, float)) and 0.0 < self.step_factor < float("inf")):
            raise ValueError(f"step_factor must be a finite Python float > 0, got {self.step_factor!r}")
        if self.early_stop and not self.keep_best:
            raise ValueError("early_stop needs keep_best=True (success is tested by the bookkeeping)")
        if self.count_queries:
            if self.trace:
                raise ValueError("trace records a gradient attack's iterates: it excludes count_queries")
            if self.keep_best or self.random_start:
                raise ValueError(
                    "count_queries stops each example at its first success from the clean input: "
                    "it excludes keep_best and random_start"
                )
            cost = getattr(self.source, "queries", None)
            if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
                raise ValueError(
                    "count_queries needs a source that states its model evaluations per call "
                    f"(an int attribute queries, as FiniteDifference has); "
                    f"{type(self.source).__name__} does not"
                )

    @property
    def needs_key(self) -> bool:
        """Whether a run draws random numbers (and so needs ``key``)."""
        return self.random_start or self.randomized or _random_part(self.source) or _random_part(self.rule)

    def __call__(
        self,
        logits_fn: LogitsFn,
        x: ArrayLike,
        y: ArrayLike | None = None,
        *,
        key: PRNGKey | None = None,
        eps: ArrayLike,
        step_size: ArrayLike | None = None,
        steps: int = 10,
        targeted: bool = False,
        bounds: Bounds = (0.0, 1.0),
        loop: LoopMode = "auto",
        return_info: bool = False,
    ) -> Any:
        r"""Run the attack: ``steps`` steps of size ``step_size`` (default
        ``step_factor * eps / steps``) inside the ``eps``-ball and ``bounds``.

        Arguments as in :func:`jaxadv.pgd`; ``key`` is required when the attack
        draws random numbers (:attr:`needs_key`): one key, or a ``[batch]`` array
        of keys, one per example (see :mod:`jaxadv.keys`; every draw of an
        example comes from its key). A randomised model (``randomized=True``) is
        called one example at a time, ``logits_fn(x[i:i+1], key_i)`` under
        ``jax.vmap``, with a key of that example. The parts' hyperparameters are
        checked first (their ``check()``: a NaN momentum decay, say, is refused
        with a ``ValueError`` instead of returning NaN).

        Returns:
          The adversarial batch, shape and dtype of ``x``; with ``return_info``
          an :class:`jaxadv.AttackResult` (``queries`` is ``None``, or the
          ``[batch]`` evaluations spent with ``count_queries``; ``trace`` the
          run's :class:`jaxadv.compose.TraceFlags` with ``trace=True``).
        """
        steps = check_steps(steps)
        check_parts(self.source)
        check_parts(self.rule)
        check_parts(self.schedule)
        if self.needs_key and key is None:
            raise ValueError("key is required: this attack draws random numbers (pass key=jax.random.key(0))")
        if key is None:
            key = jax.random.key(0)
        check_key(key, per_example=True)
        p = prepare_problem(
            logits_fn, x, y, key=key, randomized=self.randomized, bounds=bounds, targeted=targeted, eps=eps
        )
        key = row_keys(key, p.x.shape[0])
        alpha = check_step_size(self.step_factor * p.eps / steps if step_size is None else step_size, p.x)
        check_finite_step(alpha, p.lo, p.hi)
        no_queries = jnp.zeros((0,), jnp.int32) if self.count_queries else None
        if p.empty:
            return p.output(p.finalize(p.x), targeted=targeted, return_info=return_info, queries=no_queries)
        # The loop calls a randomised model with its own keys; success is judged
        # with the fixed key of the input checks (p).
        q = loop_problem(p, self.randomized)
        run = dict(key=key, step_size=alpha, steps=steps, targeted=targeted, loop=loop)
        if not self.count_queries:
            x_adv, flags = run_traced(self, q, self.start(q, key), **run)  # type: ignore[arg-type]
            return p.output(p.finalize(x_adv), targeted=targeted, return_info=return_info, trace=flags)
        x_adv, queries = run_with_queries(self, q, **run)  # type: ignore[arg-type]
        return p.output(p.finalize(x_adv), targeted=targeted, return_info=return_info, queries=queries)

    def start(self, p: Problem, key: PRNGKey) -> Array:
        """The first iterate: a random point of the feasible set (drawn per example from
        ``key``, one key or ``[batch]`` keys), or ``x``."""
        if not self.random_start:
            return p.x
        return _random_init(
            row_keys(key, p.x.shape[0]),
            p.params,
            p.x,
            p.eps,
            p.lo,
            p.hi,
            norm=self.norm,
            model=p.model,
            randomized=self.randomized,
        )


def _random_part(part: Any) -> bool:
    """A part draws random numbers when it says so (``needs_key``) or wraps one that does."""
    if getattr(part, "needs_key", False):
        return True
    inner = getattr(part, "source", None)
    return inner is not None and _random_part(inner)


@functools.partial(jax.jit, static_argnames=("norm", "model", "randomized"))
def _random_init(
    key: PRNGKey,
    params: Any,
    x: Array,
    eps: Array,
    lo: Array,
    hi: Array,
    *,
    norm: Norm,
    model: Any,
    randomized: bool = False,
) -> Array:
    """A random point of the feasible set; ``x`` itself for the examples whose clean
    logits are not finite (they are returned unchanged)."""
    x0 = random_feasible(key, x, eps, norm, lo, hi)
    clean_ok = finite_rows(source_model(model, params, randomized)(x, fold_rows(key, EVAL_FOLD)))
    return select_rows(clean_ok, x0, x)


def attack_step(i: Array, s: LoopState, ops: Operands, static: Static) -> LoopState:
    """One step of a composed attack (the loop body given to :func:`jaxadv.engine.iterate`)."""
    a = ops.attack
    model = source_model(static.model, ops.params, a.randomized)
    if s.tally is None:
        key = fold_rows(ops.key, i)
    else:  # the score-based attacks' key chain
        chain, key = split_rows(s.tally.key)
    point = a.rule.lookahead(s.rule, s.x, ops.step_size)
    g = a.source(model, point, ops.source_labels, key=key, targeted=static.targeted)
    trace = s.trace
    if trace is not None:
        z_t = g.logits if g.logits is not None and point is s.x else model(s.x, fold_rows(key, EVAL_FOLD))
        trace = record_iterate(trace, i, z_t, g, ops.labels, static.targeted, eps=ops.eps, norm=a.norm)
    masked = a.norm == "l1" and getattr(a.rule, "mask_box", True)
    grad = mask_blocked(g.grad, s.x, ops.lo, ops.hi) if masked else g.grad

    def grad_at(pt: Array, k: PRNGKey) -> Array:
        return a.source(model, pt, ops.source_labels, key=k, targeted=static.targeted).grad

    x_from, step_size, scheduled, sparsity = s.x, ops.step_size, {}, a.l1_sparsity
    if s.schedule is not None and s.best_loss is not None:
        # The step-size part sees the objective at x_t; where it restarts, the step
        # leaves from the highest-loss iterate with the gradient taken there.
        value = objective(g.loss, g.ok, static.targeted)
        best_loss = record_loss(s.best_loss, s.x, grad, value)
        sched, restart = a.schedule.update(s.schedule, Progress(i - 1, value, best_loss, ops.x, ops.eps))
        x_from = select_rows(restart, best_loss.x, s.x)
        grad = select_rows(restart, best_loss.grad, grad)
        step_size = sched.eta
        sparsity = getattr(sched, "l1_sparsity", sparsity)
        scheduled = {"schedule": sched, "best_loss": best_loss}
    ctx = Context(x_from, key, ops.eps, a.norm, sparsity, grad_at)
    direction, rule_state = a.rule.update(grad, s.rule, ctx)

    def project(v: Array) -> Array:
        return project_to_feasible(v, ops.x, ops.eps, a.norm, ops.lo, ops.hi)

    x_new = project(x_from + step_along(step_size, direction))
    settle = getattr(a.rule, "settle", None)
    if settle is not None:
        x_new, rule_state = settle(rule_state, x_from, x_new, project)
    if s.tally is not None:
        # One query at the new iterate; it is taken only where it and the
        # estimate are finite, and only by examples still active.
        z = model(x_new, fold_rows(key, EVAL_FOLD)).astype(jnp.float32)
        count, active = charge(s.tally, chain, z, ops.labels, static.targeted, a.source.queries + 1)
        move = active & g.ok & finite_rows(z)
        return LoopState(select_rows(move, x_new, s.x), select_rows(move, rule_state, s.rule), None, count)
    if a.keep_best:
        x_new = as_returned(x_new, static.dtype, ops.lo, ops.hi)
    # From a point where the logits or the gradient are not finite: back to x,
    # and the rule's state is kept.
    x_new = select_rows(g.ok, x_new, ops.x)
    rule_state = select_rows(g.ok, rule_state, s.rule)
    if s.best is None:
        return LoopState(x_new, rule_state, None, **scheduled, trace=trace)
    z = g.logits if g.logits is not None and point is s.x else model(s.x, fold_rows(key, EVAL_FOLD))
    best, hit = record(s.best, s.x, z, ops.labels, static.targeted)
    if not a.early_stop:
        return LoopState(x_new, rule_state, best, None, **scheduled, trace=trace)
    # A successful example stays where it is, with its rule's and schedule's state.
    before = {name: getattr(s, name) for name in scheduled}
    x_new, rule_state = select_rows(~hit, (x_new, rule_state), (s.x, s.rule))
    kept = _select_per_example(~hit, scheduled, before)
    return LoopState(x_new, rule_state, best, None, **kept, trace=trace)


def _select_per_example(mask: Array, new: Any, old: Any) -> Any:
    """``new`` where ``mask``, else ``old``, on the leaves with one row per example;
    the others (a schedule's ``[steps]`` checkpoint table) are the same in both."""
    b = mask.shape[0]

    def pick(n: Array, o: Array) -> Array:
        return select_rows(mask, n, o) if n.ndim and n.shape[0] == b else n

    return jax.tree.map(pick, new, old)


@functools.partial(jax.jit, static_argnames=("model", "targeted", "randomized"))
def _final(
    params: Any,
    s: LoopState,
    x: Array,
    labels: Array,
    key: PRNGKey,
    *,
    model: Any,
    targeted: bool,
    randomized: bool,
) -> Array:
    assert s.best is not None
    z = source_model(model, params, randomized)(s.x, fold_rows(key, EVAL_FOLD))
    return select(s.best, s.x, z, x, labels, targeted)


@functools.partial(jax.jit, static_argnames=("static", "steps"))
def _final_outcome(s: LoopState, ops: Operands, *, static: Static, steps: int) -> tuple[Outcome, BestLoss]:
    """The last iterate's books, for an attack that keeps the highest-loss iterate:
    its objective (from the source, with the key of step ``steps``) and success;
    the example to return is the adversarial one found, else the highest-loss
    iterate, else ``x`` (no iterate had a finite objective)."""
    assert s.best is not None and s.best_loss is not None
    a = ops.attack
    model = source_model(static.model, ops.params, a.randomized)
    key = fold_rows(ops.key, steps)
    g = a.source(model, s.x, ops.source_labels, key=key, targeted=static.targeted)
    value = objective(g.loss, g.ok, static.targeted)
    best_loss = record_loss(s.best_loss, s.x, g.grad, value)
    z = g.logits if g.logits is not None else model(s.x, fold_rows(key, EVAL_FOLD))
    best, hit = record(s.best, s.x, z, ops.labels, static.targeted)
    fallback = select_rows(best_loss.objective > -jnp.inf, best_loss.x, ops.x)
    flags = None
    if s.trace is not None:  # the last iterate, evaluated here, belongs to the last quarter
        last = record_iterate(
            s.trace, jnp.int32(steps), z, g, ops.labels, static.targeted, eps=ops.eps, norm=a.norm
        )
        flags = trace_flags(last)
    x_out = select_rows(best.found, best.x_adv, fallback)
    return Outcome(x_out, best.found, best_loss.objective, flags), best_loss


def _run(
    attack: Attack,
    p: Problem,
    state: LoopState,
    *,
    key: PRNGKey,
    step_size: Array,
    steps: int,
    targeted: bool,
    loop: LoopMode,
    loss_labels: Array | None = None,
) -> tuple[LoopState, Operands, Static]:
    operands = Operands(p.params, p.x, p.labels, p.lo, p.hi, p.eps, step_size, key, attack, loss_labels)
    # The dtype matters inside the loop only to round iterates for the bookkeeping:
    # without it, a bfloat16 batch reuses the float32 program.
    static = Static(p.model, targeted, p.dtype if attack.keep_best else None)
    state = iterate(attack_step, state, operands, steps=steps, static=static, loop=loop)
    return state, operands, static


def _start_state(attack: Attack, x: Array, x_init: Array, step_size: Array, steps: int) -> LoopState:
    """The loop's state at ``x_init``: the rule's, the books the attack keeps, and the
    step-size part's (with the highest-loss record it restarts from)."""
    state = LoopState(x_init, attack.rule.init(x_init), init_best(x_init) if attack.keep_best else None)
    if attack.trace:
        state = state._replace(trace=init_trace(x_init, steps))
    if isinstance(attack.schedule, Fixed):
        return state
    eta = jnp.broadcast_to(jnp.asarray(step_size, jnp.float32), x.shape[:1])
    schedule = attack.schedule.init(eta, steps, start=x_init, x=x)
    return state._replace(schedule=schedule, best_loss=init_best_loss(x_init))


@functools.partial(jax.jit, static_argnames=("steps", "dtype"))
def _books_start(
    attack: Attack, x: Array, lo: Array, hi: Array, x_init: Array, step_size: Array, *, steps: int, dtype: Any
) -> LoopState:
    """:func:`_start_state` from ``x_init`` rounded to ``dtype``, in one compiled call
    (a run of APGD-T is short, and its set-up would otherwise be a dozen dispatches)."""
    return _start_state(attack, x, as_returned(x_init, dtype, lo, hi), step_size, steps)


def run_from(
    attack: Attack,
    p: Problem,
    x_init: Array,
    *,
    key: PRNGKey,
    step_size: Array,
    steps: int,
    targeted: bool,
    loop: LoopMode,
) -> Array:
    """Run ``attack``'s loop from ``x_init`` on a prepared problem; float32 result
    (``p.finalize`` casts it to the caller's dtype). The building block of the
    named attacks and of the adversarial-training losses. (An attack with
    ``count_queries`` runs through :func:`run_with_queries`.) ``key``: one key or
    ``[batch]`` keys (:func:`jaxadv.keys.row_keys`); step ``i`` of example ``b``
    draws from ``fold_in(keys[b], i)``. An attack whose step-size part keeps the
    highest-loss iterate returns it for the examples it did not fool
    (:func:`run_books`)."""
    run = dict(key=key, step_size=step_size, steps=steps, targeted=targeted, loop=loop)
    return run_traced(attack, p, x_init, **run)[0]  # type: ignore[arg-type]


def run_traced(
    attack: Attack,
    p: Problem,
    x_init: Array,
    *,
    key: PRNGKey,
    step_size: Array,
    steps: int,
    targeted: bool,
    loop: LoopMode,
) -> tuple[Array, TraceFlags | None]:
    """:func:`run_from`, with the run's :class:`jaxadv.compose.TraceFlags` (``None``
    unless ``attack.trace``)."""
    if attack.count_queries:
        raise ValueError("an attack with count_queries runs through run_with_queries")
    if attack.keep_best and not isinstance(attack.schedule, Fixed):
        run = dict(key=key, step_size=step_size, steps=steps, targeted=targeted, loop=loop)
        out = run_books(attack, p, x_init, **run)[0]  # type: ignore[arg-type]
        return out.x, out.flags
    key = row_keys(key, p.x.shape[0])
    state = _start_state(attack, p.x, x_init, step_size, steps)
    state, _, _ = _run(
        attack, p, state, key=key, step_size=step_size, steps=steps, targeted=targeted, loop=loop
    )
    flags = None if state.trace is None else _flags(state.trace)
    if not attack.keep_best:
        return state.x, flags
    x_adv = _final(
        p.params, state, p.x, p.labels, key, model=p.model, targeted=targeted, randomized=attack.randomized
    )
    return x_adv, flags


_flags = jax.jit(trace_flags)


def run_books(
    attack: Attack,
    p: Problem,
    x_init: Array,
    *,
    key: PRNGKey,
    step_size: Array,
    steps: int,
    targeted: bool,
    loop: LoopMode,
    loss_labels: Array | None = None,
) -> tuple[Outcome, BestLoss]:
    """Run an attack that keeps its best iterates (``keep_best`` and a step-size part
    that restarts, such as APGD's) from ``x_init``, rounded to the caller's dtype.

    Returns the run's :class:`jaxadv.compose.Outcome` (per example: the point to
    return, the adversarial iterate found, else the highest-objective one;
    whether it fooled the model; the highest objective), which restarts merge
    (:func:`jaxadv.compose.merge`), and the highest-objective iterate itself
    (where a later run may continue from, as L1-APGD's shrinking radii do).
    ``loss_labels``: what the source's loss is given instead of the problem's
    labels (APGD-T's targeted DLR), success still being judged on the labels."""
    if not attack.keep_best or isinstance(attack.schedule, Fixed):
        raise ValueError("run_books needs an attack with keep_best and a step-size part that restarts")
    key = row_keys(key, p.x.shape[0])
    state = _books_start(attack, p.x, p.lo, p.hi, x_init, step_size, steps=steps, dtype=p.dtype)
    run = dict(
        key=key, step_size=step_size, steps=steps, targeted=targeted, loop=loop, loss_labels=loss_labels
    )
    state, operands, static = _run(attack, p, state, **run)  # type: ignore[arg-type]
    return _final_outcome(state, operands, static=static, steps=steps)


@functools.partial(jax.jit, static_argnames=("model", "targeted", "randomized"))
def _clean_stop(
    params: Any, x: Array, labels: Array, key: PRNGKey, *, model: Any, targeted: bool, randomized: bool
) -> Array:
    """The examples that stop after the clean query: already a success, or scores not finite."""
    z = source_model(model, params, randomized)(x, fold_rows(key, EVAL_FOLD))
    return stop_mask(z, labels, targeted)


def run_with_queries(
    attack: Attack,
    p: Problem,
    *,
    key: PRNGKey,
    step_size: Array,
    steps: int,
    targeted: bool,
    loop: LoopMode,
) -> tuple[Array, Array]:
    """Run an attack with ``count_queries`` from the clean inputs of a prepared
    problem: the float32 result and the ``[batch]`` int32 evaluations spent per
    example (the clean query included). The loop of :func:`jaxadv.spsa` and
    :func:`jaxadv.nes`. ``key``: one key or ``[batch]`` keys; each example's steps
    split their keys from its own chain."""
    if not attack.count_queries:
        raise ValueError("run_with_queries needs an attack with count_queries=True")
    key = row_keys(key, p.x.shape[0])
    done = _clean_stop(
        p.params, p.x, p.labels, key, model=p.model, targeted=targeted, randomized=attack.randomized
    )
    count = QueryCount(key, done, jnp.ones(p.x.shape[:1], jnp.int32))
    state = LoopState(p.x, attack.rule.init(p.x), None, count)
    state, _, _ = _run(
        attack, p, state, key=key, step_size=step_size, steps=steps, targeted=targeted, loop=loop
    )
    assert state.tally is not None
    return state.x, state.tally.queries
