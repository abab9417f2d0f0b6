r"""Diagnostics of an evaluation, in one place: the per-example indicators of attack
failure (after Pintor et al., NeurIPS 2022) and the batch-level gradient-masking
checks (in the spirit of Carlini et al., 2019, and AutoAttack).

**Batch-level checks** (:func:`masking_checks`): symptoms of masked gradients over a
batch, each reported as a warning that names it:

* ``randomness``: the model gives different outputs for the same input (evaluate
  with expectation over transformation); per example, ``unstable_predictions``;
* ``large_eps``: accuracy does not fall to about 0 under BIM at a radius that covers
  the whole box (an attack allowed anywhere should succeed); per example,
  ``unconstrained_failure``;
* ``single_step``: a single-step attack is stronger than an iterative one;
* ``black_box``: a black-box attack succeeds where the white-box attacks failed.

A check that cannot run on the given inputs is skipped with a warning that says so
(the black-box check needs Square, which needs image-shaped inputs): a skipped
check is no evidence either way.

**Per-example indicators** (:func:`indicators`).

A robust accuracy is an upper bound only if the attacks behind it worked. When
they silently fail (a defence hides its gradients, randomises its output, or the
budget was too short), the number is too high, and nothing in it says so. The
indicators look for those failures example by example, each tied to a fix.

**Where they come from.** Given the evaluated attacks' traces (``trace``, the
:class:`jaxadv.compose.TraceFlags` that a gradient attack run with
``trace=True`` keeps from what its steps compute anyway: :func:`jaxadv.evaluate`
passes those of its suite's gradient members), the first three are read off the
attacks' own iterates: their margin, their success and their gradients.
Without a trace (a suite of black-box attacks, or a result from elsewhere),
:func:`indicators` runs a *diagnostic attack* for them, on the margin loss
:math:`m(x) = \max_{j \ne y} z_j(x) - z_y(x)` (an example is adversarial when
:math:`m > 0`, up to ties): ``steps`` steps of steepest ascent with the fixed
step :math:`\alpha = 2.5\,\epsilon / T`, projected onto the ball and the box,
from the clean example, recording the margin and the prediction at each
iterate :math:`x_0 = x, \dots, x_T` and the gradient at each step. Either way,
``unstable_predictions`` takes the margin's gradient at ``x`` and ``draws``
tiny random perturbations of ``x`` (one gradient and ``draws`` forward
passes), and ``unconstrained_failure`` runs the diagnostic attack with the ball
replaced by the whole box, on the examples the evaluation left robust only.
On an example the model classifies correctly:

* ``silent_success``: some iterate was adversarial, yet the point returned is not
  (the evaluated ``x_adv`` or its ``fooled`` flag when given, else the last
  iterate). An evaluation that reported the example robust was wrong about it.
* ``incomplete_optimization``: the returned point is not adversarial, no iterate
  was, and the margin was still rising at the end, fast enough to matter (in
  some run of an attack; :func:`jaxadv.compose.still_rising`): the best of the
  last quarter of the iterates exceeds the best before it by more than
  ``tolerance`` of the whole rise, and as many steps again at the last
  quarter's pace would make it adversarial.
* ``unavailable_gradients``: the gradient or the objective is not finite at an
  iterate, or the gradient vanishes at the start or at an iterate before the
  first success. On the diagnostic attack's margin: the budget spent along it,
  :math:`\epsilon\|g\|_*` (the dual norm), would move the margin by at most
  ``1e-6`` of :math:`\max(1, |m|)`. From traces: the attack's gradient is zero
  (its steps follow the gradient's direction, which a tiny one still gives),
  in every traced attack that ran on the example (one with a usable gradient,
  on another loss, could move it).
* ``unstable_predictions``: under perturbations :math:`\delta` of size
  ``noise`` (a fraction of the box), the margin moves by more than its first-order
  prediction allows: for some draw, :math:`|m(x+\delta_k) - m(x) - g^\top\delta_k| >
  \tfrac12 |g^\top\delta_k| + 0.01 \max(1, |m(x)|)`. A smooth model's remainder is
  second order, far below its first-order change; a randomised model's is not
  small at all, and shattered gradients predict the change no better than chance.
* ``unconstrained_failure``: the diagnostic attack with the whole box as its
  budget (no ball) never made the example adversarial. With informative
  gradients it nearly always can.
* ``transfer_failure`` (with ``surrogate_fn`` and ``x_adv``): ``x_adv`` fools the
  surrogate the attack ran on (a BPDA or transfer model) but not the model.

Examples the model misclassifies are not attacked and raise no indicator.
:data:`FIXES` says what to do about each.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.compile import jit
from jaxadv._core.problem import output_shape
from jaxadv._core.rows import select_rows
from jaxadv.attacks.iterative import bim, pgd
from jaxadv.attacks.single_step import fgsm
from jaxadv.attacks.square import square
from jaxadv.compose.bookkeeping import DUAL, TraceFlags, still_rising, vanishing
from jaxadv.keys import draw_rows, fold_rows, per_row, row_keys, split_rows
from jaxadv.losses import cw_margin
from jaxadv.models import ModelStatic, combine_model, predict, split_model
from jaxadv.models import logits as model_logits
from jaxadv.success import hits
from jaxadv.threat_models import mask_blocked, norm_of, project_to_feasible, steepest_direction, step_along
from jaxadv.training.checks import check_bounds
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_in_bounds, check_inputs, check_labels, check_norm, check_steps

#: The indicators, in the order of :class:`Indicators`.
NAMES = (
    "silent_success",
    "incomplete_optimization",
    "unavailable_gradients",
    "unstable_predictions",
    "unconstrained_failure",
    "transfer_failure",
)

#: What each indicator means for the example, and what to do about it.
FIXES = {
    "silent_success": (
        "an adversarial point was found but not returned: keep the best iterate rather than the last, "
        "or add a stronger attack to the suite"
    ),
    "incomplete_optimization": (
        "the loss was still improving when the budget ended: run more steps, or an attack with an "
        "adaptive step size (APGD)"
    ),
    "unavailable_gradients": (
        "the input gradient is zero, NaN or vanishing: wrap non-differentiable layers in jaxadv.bpda, "
        "try another loss (DLR), or a black-box attack (Square)"
    ),
    "unstable_predictions": (
        "tiny input noise moves the output far more than its gradient predicts (randomness or shattered "
        "gradients): attack with EOT (randomized=True, suite='rand') or through jaxadv.bpda"
    ),
    "unconstrained_failure": (
        "an attack allowed the whole input box never fooled the model: its gradients do not lead "
        "anywhere; check them (jaxadv.bpda, EOT) before trusting any attack on these examples"
    ),
    "transfer_failure": (
        "the adversarial example fools the surrogate but not the model: bring the surrogate closer "
        "to the model (bpda's approx), or attack the model itself with EOT"
    ),
}

_UNSTABLE = 1e-2  # the margin's first-order remainder allowed, relative to max(1, |m|) ...
_LINEAR = 0.5  # ... plus this fraction of the first-order change itself


class Indicators(NamedTuple):
    """Per-example indicators of attack failure: ``[n]`` bool arrays (see the module
    docstring); ``transfer_failure`` is ``None`` when no surrogate was given."""

    silent_success: Array
    incomplete_optimization: Array
    unavailable_gradients: Array
    unstable_predictions: Array
    unconstrained_failure: Array
    transfer_failure: Array | None = None

    def any(self) -> Array:
        """``[n]`` bool: some indicator fired on the example."""
        return functools.reduce(jnp.logical_or, [v for v in self if v is not None])

    def counts(self) -> dict[str, int]:
        """How many examples each computed indicator fired on."""
        return {
            name: int(np.sum(np.asarray(v))) for name, v in zip(NAMES, self, strict=True) if v is not None
        }


def _margin(z: Array, y: Array) -> Array:
    return cw_margin(z, jax.nn.one_hot(y, z.shape[-1]))


def _split(keys: Array) -> tuple[Array, ...]:
    """Per example: the keys of the ball run, the box run, the noise and a randomised
    model's fixed draws. Each example's numbers come from its own key alone, so an
    example gets the same indicators in any batch."""
    return split_rows(keys, 4)


class _Trace(NamedTuple):
    ever: Array  # [n] some iterate was adversarial
    last: Array  # [n] the last iterate is adversarial
    incomplete: Array
    unavailable: Array


def _probe(call: Any, x: Array, y: Array, eps: Array, lo: Array, hi: Array, keys: Array, eval_keys: Array,
           *, norm: Norm, steps: int, tolerance: float, randomized: bool) -> _Trace:  # fmt: skip
    """The diagnostic attack from ``x`` in the ``eps``-ball and the box. A randomised
    model's iterates are tested for success under the fixed draws ``eval_keys``, as
    the clean examples and the returned ones are."""

    def margin_sum(xi: Array, k: Array) -> tuple[Array, Array]:
        z = call(xi, k).astype(jnp.float32)
        return jnp.sum(_margin(z, y)), z

    grad_fn = jax.grad(margin_sum, has_aux=True)
    alpha = 2.5 * eps / steps

    def step(xt: Array, t: Array) -> tuple[Array, tuple[Array, ...]]:
        g, z = grad_fn(xt, fold_rows(keys, t))
        m = _margin(z, y)
        finite = jnp.all(jnp.isfinite(z), axis=1) & jnp.all(jnp.isfinite(g.reshape(len(g), -1)), axis=1)
        vanish = vanishing(eps * norm_of(g, DUAL[norm]), m)
        g = select_rows(finite, g, 0.0)
        if norm == "l1":  # a sparse step spent on coordinates the box blocks would not move
            g = mask_blocked(g, xt, lo, hi)
        x_next = project_to_feasible(
            xt + step_along(alpha, steepest_direction(g, norm)), x, eps, norm, lo, hi
        )
        adv = hits(call(xt, eval_keys), y, False) if randomized else hits(z, y, False)
        return x_next.astype(x.dtype), (m, adv, finite, vanish)

    x_last, (m, adv, finite, vanish) = jax.lax.scan(step, x, jnp.arange(steps))
    z_last = call(x_last, eval_keys).astype(jnp.float32)
    m = jnp.concatenate([m, _margin(z_last, y)[None]])  # [T + 1, n]
    adv = jnp.concatenate([adv, hits(z_last, y, False)[None]])
    ever = jnp.any(adv, axis=0)
    before = jnp.cumsum(adv, axis=0) == 0  # [T + 1, n] no iterate so far was adversarial
    unavailable = vanish[0] | jnp.any(~finite, axis=0) | jnp.any(vanish & before[:-1], axis=0)
    k = max(1, (steps + 1) // 4)
    m_safe = jnp.where(jnp.isfinite(m), m, -jnp.inf)
    early, late = jnp.max(m_safe[:-k], axis=0), jnp.max(m_safe[-k:], axis=0)
    incomplete = ~ever & still_rising(m_safe[0], early, late, tolerance)
    return _Trace(ever, adv[-1], incomplete, unavailable)


def _call(model: ModelStatic, params: Any, randomized: bool) -> Any:
    f: Any = combine_model(model, params)  # logits_fn(x), or logits_fn(x, key) when randomised
    return per_row(f) if randomized else (lambda xi, _k: f(xi))


@functools.partial(jit, static_argnames=("model", "draws", "randomized"))
def _local(
    model: ModelStatic, params: Any, x: Array, y: Array, lo: Array, hi: Array, keys: Array, noise: Array,
    *, draws: int, randomized: bool,
) -> tuple[Array, Array]:  # fmt: skip
    """``(correct, unstable)``, ``[n]`` each: the clean prediction, and the margin's
    first-order test under ``draws`` tiny perturbations of ``x``."""
    call = _call(model, params, randomized)
    n = x.shape[0]
    _, _, k_noise, eval_keys = _split(keys)

    def margin_sum(xi: Array, k: Array) -> tuple[Array, Array]:
        z = call(xi, k).astype(jnp.float32)
        return jnp.sum(_margin(z, y)), z

    g0, z0 = jax.grad(margin_sum, has_aux=True)(x, eval_keys)
    m0 = _margin(z0, y)
    correct = jnp.all(jnp.isfinite(z0), axis=1) & (jnp.argmax(z0, axis=1) == y)
    span = jnp.max(jnp.broadcast_to(hi - lo, x.shape[1:]))
    x32 = x.astype(jnp.float32)
    g0 = g0.astype(jnp.float32)

    def remainder(d: Array) -> tuple[Array, Array]:
        k_draw, k_model = split_rows(fold_rows(k_noise, d))
        unit = draw_rows(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32, -1.0, 1.0), k_draw)
        x_noisy = jnp.clip(x32 + noise * span * unit, lo, hi).astype(x.dtype)
        delta = x_noisy.astype(jnp.float32) - x32
        z = call(x_noisy, k_model).astype(jnp.float32)
        linear = jnp.sum((g0 * delta).reshape(n, -1), axis=1)
        return jnp.abs(_margin(z, y) - m0 - linear), jnp.abs(linear)

    rem, lin = jax.lax.map(remainder, jnp.arange(draws))  # [draws, n]
    scale = jnp.maximum(1.0, jnp.abs(m0))
    unstable = ~jnp.all(rem <= _LINEAR * lin + _UNSTABLE * scale, axis=0)  # NaN: unstable
    return correct, correct & unstable


@functools.partial(jit, static_argnames=("model", "norm", "steps", "randomized", "tolerance", "box"))
def _probe_run(
    model: ModelStatic, params: Any, x: Array, y: Array, eps: Array, lo: Array, hi: Array, keys: Array,
    rows: Array | None, *, norm: Norm, steps: int, randomized: bool, tolerance: float, box: bool,
) -> _Trace:  # fmt: skip
    """The diagnostic attack (:func:`_probe`), compiled: in the ball, or with
    ``box`` the box-only run, on the ``rows`` of the batch (all when ``None``);
    ``keys``: the examples' own keys, split here."""
    k_ball, k_box, _, eval_keys = _split(keys)
    k_run = k_box if box else k_ball
    if rows is not None:
        x, y, k_run, eval_keys = x[rows], y[rows], k_run[rows], eval_keys[rows]
    call = _call(model, params, randomized)
    return _probe(
        call, x, y, eps, lo, hi, k_run, eval_keys, norm=norm, steps=steps, tolerance=tolerance,
        randomized=randomized,
    )  # fmt: skip


def _bucket(k: int, n: int) -> int:
    """The rows a probe of ``k`` of ``n`` examples runs on: the next of 1, 2, 3, 4, 6,
    8, 12, 16, ... (powers of two and one and a half times them, at most ``n``), so
    that a run compiles a few sizes, not one per count, and pads by a third at most."""
    power = 1 << max(k - 1, 0).bit_length()  # the next power of two
    three_quarters = power * 3 // 4
    return min(n, three_quarters if power >= 4 and k <= three_quarters else power)


def indicators(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps: float,
    key: PRNGKey,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    x_adv: ArrayLike | None = None,
    fooled: ArrayLike | None = None,
    surrogate_fn: LogitsFn | None = None,
    steps: int = 20,
    box_steps: int = 5,
    draws: int = 4,
    noise: float = 1e-3,
    tolerance: float = 0.05,
    randomized: bool = False,
    trace: TraceFlags | None = None,
) -> Indicators:
    r"""Per-example indicators of attack failure on a batch (see the module docstring).

    Args:
      logits_fn: the model, ``logits_fn(x) -> [n, classes]`` logits, or
        ``logits_fn(x, key)`` with ``randomized=True``.
      x: ``[n, ...]`` clean examples inside ``bounds``.
      y: ``[n]`` int labels.
      eps: the radius of the threat model the evaluation used (> 0).
      key: one PRNG key, or ``[n]`` keys, one per example (as :func:`jaxadv.evaluate`
        passes them): the diagnostic attack's noise and a randomised model's draws.
        An example's indicators depend on its own key only, not on the batch.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      bounds: the valid input range ``(lo, hi)``.
      x_adv: ``[n, ...]`` the examples an evaluation returned; ``silent_success``
        then asks whether they are adversarial. Exclusive with ``fooled``.
      fooled: ``[n]`` bool, whether the evaluation fooled each example (for
        instance ``result.fooled_by >= 0`` of :func:`jaxadv.evaluate`).
      surrogate_fn: the model the attack ran on, when it was not ``logits_fn``
        itself (a BPDA or transfer surrogate); needs ``x_adv``, and computes
        ``transfer_failure``.
      steps: the diagnostic attack's steps (``>= 1``).
      box_steps: the box-only run's steps (``>= 1``): with the whole box as its
        budget, each step may cross it, so a few suffice.
      draws: random perturbations for ``unstable_predictions`` (``>= 1``).
      noise: their size, a fraction of the box's width (in ``(0, 1)``).
      tolerance: the fraction of the margin's rise that its last quarter may still
        add before ``incomplete_optimization`` fires (in ``(0, 1)``).
      randomized: the model is ``logits_fn(x, key)``, called with a fresh key per
        example at every call; its randomness shows as ``unstable_predictions``.
      trace: the evaluated attacks' :class:`jaxadv.compose.TraceFlags` (``[n]``
        each; for instance ``AttackResult.trace`` of ``jaxadv.apgd(...,
        return_info=True, trace=True)``, or several merged with
        :func:`jaxadv.compose.merge_flags`): ``silent_success``,
        ``incomplete_optimization`` and ``unavailable_gradients`` are read off it
        instead of a diagnostic attack. Needs ``x_adv`` or ``fooled``.

    Returns:
      :class:`Indicators` of ``[n]`` bool arrays. Cost: one gradient and
      ``draws`` forward passes of the batch, ``box_steps`` gradients and a
      forward pass of the examples left robust (the box-only run), and, without
      ``trace``, ``steps`` gradients and a forward pass of the batch (the
      diagnostic attack).

    Raises:
      ValueError: bad shapes, ``eps``, ``steps``, ``draws``, ``noise`` or
        ``tolerance``; both ``x_adv`` and ``fooled``; ``surrogate_fn`` without ``x_adv``.
    """
    norm = check_norm(norm)
    steps = check_steps(steps)
    draws = check_steps(draws, "draws")
    box_steps = check_steps(box_steps, "box_steps")
    x = check_inputs(x)
    y = jnp.asarray(y)
    if x.ndim < 2 or y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"x must be [n, ...] and y [n] ints; got x {x.shape}, y {y.shape} {y.dtype}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    for name, value in (("noise", noise), ("tolerance", tolerance)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if x_adv is not None and fooled is not None:
        raise ValueError("pass x_adv or fooled, not both")
    if surrogate_fn is not None and x_adv is None:
        raise ValueError("surrogate_fn needs x_adv: transfer_failure compares the two models on it")
    if trace is not None and x_adv is None and fooled is None:
        raise ValueError("trace needs x_adv or fooled: silent_success compares it with the returned points")
    keys = row_keys(key, x.shape[0])
    lo, hi = check_bounds(bounds)
    n = x.shape[0]
    model, params = split_model(logits_fn)
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)  # one example (the batch may be empty)
    if randomized:
        classes = jax.eval_shape(logits_fn, one, jax.random.key(0)).shape[-1]
    else:  # traced once per model structure and input shape
        classes = output_shape(model, params, one)[-1]
    if classes < 2:
        raise ValueError(f"the model has {classes} class: an attack needs at least two to move an example to")
    y = check_labels(y, n, classes)
    if n == 0:  # nothing to attack: empty indicators, without compiling for zero examples
        empty = jnp.zeros((0,), bool)
        return Indicators(empty, empty, empty, empty, empty, None if surrogate_fn is None else empty)
    check_in_bounds(x.astype(jnp.float32), lo, hi, x.dtype)
    if trace is not None:
        trace = TraceFlags(*(jnp.asarray(v, bool) for v in trace))
        if any(v.shape != (n,) for v in trace):
            raise ValueError(f"trace must hold [n] = [{n}] bools per flag, got {[v.shape for v in trace]}")
    big = large_eps(norm, x, np.asarray(lo), np.asarray(hi))
    y = y.astype(jnp.int32)
    model_args = (model, params)
    probe = functools.partial(
        _probe_run, *model_args, norm=norm, randomized=randomized, tolerance=float(tolerance)
    )
    correct, unstable = _local(
        *model_args, x, y, lo, hi, keys, jnp.float32(noise), draws=draws, randomized=randomized
    )  # fmt: skip

    def fools(fn: Any, xa: Array) -> Array:
        if randomized:  # under the draws the clean examples were classified with
            return hits(per_row(fn)(xa, _split(keys)[3]), y, False)
        return hits(fn(xa), y, False)

    ball = None
    if trace is None:
        ball = probe(x, y, jnp.float32(eps), lo, hi, keys, None, steps=steps, box=False)
    if fooled is not None:
        returned = jnp.asarray(fooled, bool)
        if returned.shape != (n,):
            raise ValueError(f"fooled must be [n] = [{n}] bools, got shape {returned.shape}")
    elif x_adv is not None:
        xa = jnp.asarray(x_adv)
        if xa.shape != x.shape:
            raise ValueError(f"x_adv must have the shape of x {x.shape}, got {xa.shape}")
        returned = fools(logits_fn, xa)
    else:
        assert ball is not None
        returned = ball.last
    # On the host from here: a handful of [n] flags, not worth a dispatch each.
    ok, still, done = (np.asarray(v, bool) for v in (correct, unstable, returned))
    if trace is not None:
        ever = np.asarray(trace.ever)
        incomplete = ok & ~done & np.asarray(trace.incomplete)
        unavailable = ok & np.asarray(trace.unavailable)
    else:
        assert ball is not None
        ever = np.asarray(ball.ever)
        incomplete = ok & np.asarray(ball.incomplete)
        unavailable = ok & np.asarray(ball.unavailable)

    # The box-only run, on the examples left robust (padded to a few sizes).
    left = np.nonzero(ok & ~done)[0]
    unconstrained = np.zeros(n, bool)
    if left.size:
        rows = np.concatenate([left, np.full(_bucket(left.size, n) - left.size, left[0])])
        radius = jnp.float32(max(big, eps))
        box = probe(x, y, radius, lo, hi, keys, jnp.asarray(rows), steps=box_steps, box=True)
        unconstrained[left] = ~np.asarray(box.ever)[: left.size]
    transfer = None
    if surrogate_fn is not None:
        xa = jnp.asarray(x_adv)
        transfer = jnp.asarray(ok & np.asarray(fools(surrogate_fn, xa) & ~fools(logits_fn, xa)))
    return Indicators(
        jnp.asarray(ok & ever & ~done),
        jnp.asarray(incomplete),
        jnp.asarray(unavailable),
        jnp.asarray(still),
        jnp.asarray(unconstrained),
        transfer,
    )


# --- batch-level checks ---------------------------------------------------------------


class MaskingReport(NamedTuple):
    """What :func:`masking_checks` found: its warnings, and the figures behind them."""

    warnings: list[str]
    figures: dict[str, Any]


def large_eps(norm: Norm, x: Any, lo: np.ndarray, hi: np.ndarray) -> float:
    """A radius that covers the whole box ``[lo, hi]`` around any point of ``x``
    ``[n, ...]``: the box's widest span in L-inf, that span times the L2 or L1 norm
    of a vector of ones."""
    span = float(np.max(np.broadcast_to(hi - lo, x.shape[1:])))
    dim = int(np.prod(x.shape[1:]))
    return {"linf": span, "l2": span * float(np.sqrt(dim)), "l1": span * dim}[norm]


def _square_unsupported(norm: Norm, x: np.ndarray) -> str | None:
    """Why Square cannot run here, or ``None`` when it can."""
    if norm not in ("linf", "l2", "l1"):
        return f"Square supports norm='linf', 'l2' or 'l1', not {norm!r}"
    if x.ndim not in (3, 4):
        return f"Square needs image-shaped inputs [n, H, W(, C)], got shape {x.shape}"
    return None


def masking_checks(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    *,
    eps: float,
    norm: Norm,
    key: PRNGKey,
    bounds: Bounds = (0.0, 1.0),
    suite_result: Any = None,
    black_box: list[bool] | None = None,
    tolerance: float = 0.02,
    large_eps_accuracy: float = 0.1,
) -> MaskingReport:
    """Run the gradient-masking checks on a batch ``x`` ``[n, ...]`` with labels ``y`` ``[n]``.

    Args:
      logits_fn, x, y, eps, norm, key, bounds: the model, a batch and the threat model.
      suite_result: an :class:`EvaluationResult` of a suite that ran on examples
        including ``x``; with ``black_box`` (one flag per attack of the suite)
        it tells whether black-box attacks succeeded where white-box ones failed.
      tolerance: accuracy gap (fraction) tolerated before warning.
      large_eps_accuracy: accuracy at a very large eps above which to warn.

    Returns:
      ``MaskingReport(warnings, figures)``. A check that does not apply (Square
      on flat inputs) is skipped with a warning and its reason in
      ``figures["black_box_skipped"]``.
    """
    for name, value in (("tolerance", tolerance), ("large_eps_accuracy", large_eps_accuracy)):
        if not 0.0 <= value <= 1.0:  # NaN fails the comparison too
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    x = np.asarray(x)
    y = np.asarray(y)
    lo, hi = np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32)
    warnings: list[str] = []
    figures: dict[str, Any] = {}
    k1, k2 = jax.random.split(key)

    z1, z2 = np.asarray(model_logits(logits_fn, x)), np.asarray(model_logits(logits_fn, x))
    figures["randomness_max_logit_change"] = float(np.max(np.abs(z1 - z2)))
    if not np.array_equal(z1, z2):
        warnings.append(
            "the model is randomised (two calls on the same inputs differ): gradient attacks see a "
            "noisy objective; evaluate with expectation over transformation"
        )

    def acc(x_adv: Any) -> float:
        return float(np.mean(np.asarray(predict(logits_fn, x_adv)) == y))

    a_pgd: float | None = None
    try:
        big = large_eps(norm, x, lo, hi)
        a_big = acc(bim(logits_fn, x, y, eps=big, steps=50, norm=norm, bounds=bounds))
        figures["large_eps"] = big
        figures["accuracy_at_large_eps"] = a_big
        if a_big > large_eps_accuracy:
            warnings.append(
                f"accuracy stays at {a_big:.1%} under BIM-50 at a very large eps={big:g} (the whole box): "
                "an unbounded attack should reach ~0%; gradients look masked or obfuscated"
            )

        a_fgsm = acc(fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=bounds))
        a_pgd = acc(pgd(logits_fn, x, y, key=k1, eps=eps, steps=20, norm=norm, bounds=bounds))
        figures["accuracy_single_step"] = a_fgsm
        figures["accuracy_iterative"] = a_pgd
        if a_fgsm < a_pgd - tolerance:
            warnings.append(
                f"the single-step attack (FGSM, {a_fgsm:.1%}) is stronger than the iterative one "
                f"(PGD-20, {a_pgd:.1%}): a sign of gradient masking"
            )

    except Exception as e:  # a model without gradients (e.g. jaxadv.from_callable)
        figures["white_box_error"] = f"{type(e).__name__}: {e}"
        warnings.append(
            f"gradient attacks could not run on this model ({type(e).__name__}); white-box checks skipped"
        )

    if suite_result is not None and black_box is not None and any(black_box):
        if not all(black_box):
            wins = sum(int(np.sum(suite_result.fooled_by == i)) for i, bb in enumerate(black_box) if bb)
            frac = wins / max(suite_result.num_examples, 1)
            figures["black_box_only_successes"] = frac
            if frac > tolerance:
                warnings.append(
                    f"black-box attacks fooled {frac:.1%} of the examples on which every white-box "
                    "attack failed: white-box gradients look masked"
                )
    elif (reason := _square_unsupported(norm, x)) is not None:
        figures["black_box_skipped"] = reason
        warnings.append(f"black-box check skipped: {reason}; it is no evidence for or against masking")
    else:
        sq = square(logits_fn, x, y, key=k2, eps=eps, queries=300, norm=norm, bounds=bounds)
        a_sq = acc(sq)
        figures["accuracy_black_box"] = a_sq
        if a_pgd is not None and a_sq < a_pgd - tolerance:
            warnings.append(
                f"a black-box attack (Square, 300 queries, {a_sq:.1%}) is stronger than white-box "
                f"PGD-20 ({a_pgd:.1%}): white-box gradients look masked"
            )
    return MaskingReport(warnings, figures)
