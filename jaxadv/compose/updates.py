r"""Update rules: how an iterative attack turns gradients into a step direction.

A rule has the shape of an optax transformation:

* ``init(x) -> state``: its state for a batch of iterates ``x``;
* ``lookahead(state, x_t, step_size) -> point``: where the next gradient is
  taken (``x_t`` itself except for Nesterov's look-ahead);
* ``update(grad, state, ctx) -> (direction, state)``: the direction of the
  step from ``x_t``, which the loop scales by ``step_size`` and projects;
* optionally ``settle(state, x_t, z, project) -> (x_next, state)``: the next
  iterate from the projected step ``z`` (APGD's :class:`HeavyBall` mixes in the
  previous move and projects again); without it the next iterate is ``z``.

``ctx`` (:class:`Context`) carries the iterate, the norm, the step's key and a
``grad_at(point, key)`` callback for rules that need more gradients (variance
tuning). Directions are steepest-ascent directions of unit norm
(:func:`jaxadv.threat_models.steepest_direction`): the sign for L-inf, the normalised
gradient for L2, a sparse direction for L1.

Rules are frozen dataclasses registered as pytrees: ``decay`` and ``neighborhood`` are
traced leaves (new values do not recompile); counts are static. ``check()``
refuses a NaN, infinite or negative ``decay`` or ``neighborhood`` with a ``ValueError``
(when the values are concrete); the factories and :class:`jaxadv.compose.Attack`
call it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxadv._core.rows import flat
from jaxadv.compose.sources import _pytree
from jaxadv.keys import draw_rows, fold_rows, row_keys
from jaxadv.threat_models import per_example, row_sum, steepest_direction, step_along, unit_l1
from jaxadv.typing import Array, ArrayLike, Norm, PRNGKey
from jaxadv.validation import check_finite

__all__ = [
    "Context",
    "HeavyBall",
    "HeavyBallState",
    "Momentum",
    "Nesterov",
    "SparseSteepest",
    "Steepest",
    "UpdateRule",
    "VarianceTuning",
    "heavy_ball",
    "momentum",
    "nesterov",
    "sparse_steepest",
    "steepest",
    "variance_tuning",
]


class Context(NamedTuple):
    """What a rule may use besides the gradient and its state.

    Attributes:
      x_t: ``[batch, ...]`` current iterate.
      key: the step's ``[batch]`` keys, one per example (:mod:`jaxadv.keys`).
      eps: scalar or ``[batch]`` radius.
      norm: canonical norm name (static).
      l1_sparsity: fraction of coordinates an L1 direction moves: the attack's
        static one, or ``[batch]`` fractions from a step-size part that adapts
        them (:class:`jaxadv.compose.SparsityCheckpoints`).
      grad_at: ``grad_at(point, keys) -> [batch, ...]``: the source's gradient at
        another point (0 where it is not finite), ``keys`` ``[batch]``.
    """

    x_t: Array
    key: PRNGKey
    eps: Array
    norm: Norm
    l1_sparsity: Any
    grad_at: Callable[[Array, PRNGKey], Array]


class UpdateRule(Protocol):
    """``init``, ``lookahead`` and ``update`` (see the module docstring)."""

    def init(self, x: Array) -> Any: ...

    def lookahead(self, state: Any, x_t: Array, step_size: Array) -> Array: ...

    def update(self, grad: Array, state: Any, ctx: Context) -> tuple[Array, Any]: ...


def _direction(v: Array, ctx: Context) -> Array:
    return steepest_direction(v, ctx.norm, l1_sparsity=ctx.l1_sparsity)


@_pytree(data=(), meta=())
@dataclasses.dataclass(frozen=True)
class Steepest:
    r"""Plain steepest ascent: :math:`d = d_p(g)` (FGSM, BIM, PGD)."""

    def init(self, x: Array) -> tuple[()]:
        return ()

    def lookahead(self, state: Any, x_t: Array, step_size: Array) -> Array:
        return x_t

    def update(self, grad: Array, state: Any, ctx: Context) -> tuple[Array, Any]:
        return _direction(grad, ctx), state


@_pytree(data=("decay",), meta=())
@dataclasses.dataclass(frozen=True)
class Momentum:
    r"""Momentum on L1-normalised gradients (MI-FGSM, Dong et al., 2018):
    :math:`v \leftarrow \mu v + g/\|g\|_1`, :math:`d = d_p(v)`."""

    decay: Any = 1.0

    def check(self) -> None:
        """Refuse a ``decay`` that is not a finite number ``>= 0``."""
        check_finite(self.decay, "decay", minimum=0.0)

    def init(self, x: Array) -> Array:
        return jnp.zeros_like(x, jnp.float32)

    def lookahead(self, state: Any, x_t: Array, step_size: Array) -> Array:
        return x_t

    def update(self, grad: Array, state: Any, ctx: Context) -> tuple[Array, Any]:
        velocity = self.decay * state + unit_l1(grad)
        return _direction(velocity, ctx), velocity


def _lookahead(velocity: Array, x_t: Array, step_size: Array, decay: Array) -> Array:
    # The velocity in units of the gradient's mean absolute value (the paper's
    # normalisation): n times the L1-normalised one.
    n = math.prod(x_t.shape[1:])
    return x_t + step_along(step_size, decay * n * velocity)


@_pytree(data=("decay",), meta=())
@dataclasses.dataclass(frozen=True)
class Nesterov:
    r"""Nesterov momentum (NI-FGSM, Lin et al., 2020): the gradient is taken at the
    look-ahead point :math:`x_t + \alpha\mu v` (:math:`v` in units of the
    gradient's mean absolute value), then :math:`v \leftarrow \mu v + g/\|g\|_1`
    and :math:`d = d_p(v)` as in :class:`Momentum`."""

    decay: Any = 1.0

    def check(self) -> None:
        """Refuse a ``decay`` that is not a finite number ``>= 0``."""
        check_finite(self.decay, "decay", minimum=0.0)

    def init(self, x: Array) -> Array:
        return jnp.zeros_like(x, jnp.float32)

    def lookahead(self, state: Any, x_t: Array, step_size: Array) -> Array:
        return _lookahead(state, x_t, step_size, self.decay)

    def update(self, grad: Array, state: Any, ctx: Context) -> tuple[Array, Any]:
        velocity = self.decay * state + unit_l1(grad)
        return _direction(velocity, ctx), velocity


class VarianceState(NamedTuple):
    velocity: Array
    variance: Array


@_pytree(data=("decay", "neighborhood"), meta=("num_neighbors",))
@dataclasses.dataclass(frozen=True)
class VarianceTuning:
    r"""Variance-tuned momentum (VMI-FGSM, Wang & He, 2021).

    .. math::
        v \leftarrow \mu v + \frac{g + \nu}{\|g + \nu\|_1},\qquad
        \nu \leftarrow \frac1N \sum_{j=1}^{N} \nabla_x L(x_t + r_j) - g,\quad
        r_j \sim U[-\beta\epsilon, \beta\epsilon]^n,

    :math:`d = d_p(v)`, with :math:`\nu = 0` at the first step. The
    ``num_neighbors`` (:math:`N`) neighbour gradients cost :math:`N` extra
    forward-backward passes per step; :math:`\beta` is ``neighborhood``. Each
    example draws its neighbours from its own key.
    """

    decay: Any = 1.0
    neighborhood: Any = 1.5
    num_neighbors: int = 20

    needs_key = True  # random neighbours (not a field)

    def check(self) -> None:
        """Refuse a ``decay`` or ``neighborhood`` that is not a finite number ``>= 0``."""
        check_finite(self.decay, "decay", minimum=0.0)
        check_finite(self.neighborhood, "neighborhood", minimum=0.0)

    def init(self, x: Array) -> VarianceState:
        return VarianceState(jnp.zeros_like(x, jnp.float32), jnp.zeros_like(x, jnp.float32))

    def lookahead(self, state: Any, x_t: Array, step_size: Array) -> Array:
        return x_t

    def update(self, grad: Array, state: Any, ctx: Context) -> tuple[Array, Any]:
        velocity = self.decay * state.velocity + unit_l1(grad + state.variance)
        radius = per_example(self.neighborhood * jnp.asarray(ctx.eps, jnp.float32), ctx.x_t)

        keys = row_keys(ctx.key, ctx.x_t.shape[0])  # one key, or one per example

        def neighbour(total: Array, j: Array) -> tuple[Array, None]:
            k = fold_rows(keys, j)
            row = ctx.x_t.shape[1:]
            r = draw_rows(lambda kr: jax.random.uniform(kr, row, jnp.float32, -1.0, 1.0), k) * radius
            return total + ctx.grad_at(ctx.x_t + r, k), None

        total, _ = jax.lax.scan(neighbour, jnp.zeros_like(grad), jnp.arange(self.num_neighbors) + 1)
        variance = total / float(self.num_neighbors) - grad
        return _direction(velocity, ctx), VarianceState(velocity, variance)


class HeavyBallState(NamedTuple):
    """``previous``: the iterate the last step left from; ``moved``: ``[batch]``
    bool, a step has been taken."""

    previous: Array
    moved: Array


@_pytree(data=("alpha",), meta=())
@dataclasses.dataclass(frozen=True)
class HeavyBall:
    r"""APGD's momentum on projected steps (Croce & Hein, 2020). The step direction
    is the steepest one, :math:`d = d_p(g)`; from the projected step
    :math:`z = \Pi_S(x_t + \eta d)` the next iterate is

    .. math::
        x_{t+1} = \Pi_S\big(x_t + \alpha (z - x_t) + (1 - \alpha)(x_t - x_{t-1})\big),

    with :math:`\alpha = 1` at the first step (:meth:`settle`). Unlike
    :class:`Momentum`, the memory is of points, not of gradients."""

    alpha: Any = 0.75

    def check(self) -> None:
        """Refuse an ``alpha`` that is not a finite number in ``[0, 1]``."""
        check_finite(self.alpha, "alpha", minimum=0.0, maximum=1.0)

    def init(self, x: Array) -> HeavyBallState:
        return HeavyBallState(x, jnp.zeros(x.shape[:1], bool))

    def lookahead(self, state: Any, x_t: Array, step_size: Array) -> Array:
        return x_t

    def update(self, grad: Array, state: Any, ctx: Context) -> tuple[Array, Any]:
        return _direction(grad, ctx), state

    def settle(
        self, state: HeavyBallState, x_t: Array, z: Array, project: Callable[[Array], Array]
    ) -> tuple[Array, HeavyBallState]:
        """The next iterate from the projected step ``z`` (class docstring)."""
        a = per_example(jnp.where(state.moved, self.alpha, 1.0), x_t)
        x_next = project(x_t + a * (z - x_t) + (1.0 - a) * (x_t - state.previous))
        return x_next, HeavyBallState(x_t, jnp.ones_like(state.moved))


def sparse_sign(grad: Array, fraction: Array) -> Array:
    r"""L1-APGD's step direction: :math:`\mathrm{sign}(g_i)/|K|` on the set :math:`K`
    of coordinates whose :math:`|g_i|` reaches the :math:`(1 - \kappa)`-quantile of
    the example's :math:`|g|` (the top ``fraction`` :math:`\kappa`, ``[batch]``),
    0 elsewhere; a unit-L1 direction (0 for a zero gradient)."""
    g = flat(grad)
    n = g.shape[1]
    a = jnp.abs(g)
    idx = jnp.clip(jnp.floor((1.0 - fraction) * n), 0, n - 1).astype(jnp.int32)
    # A sort rather than lax.top_k, which a batch-sharded input would all-gather.
    threshold = jnp.take_along_axis(jnp.sort(a, axis=1), idx[:, None], axis=1)
    s = jnp.where(a >= threshold, jnp.sign(g), 0.0)
    return (s / (row_sum(jnp.abs(s))[:, None] + 1e-10)).reshape(grad.shape)


@_pytree(data=(), meta=())
@dataclasses.dataclass(frozen=True)
class SparseSteepest:
    r"""L1-APGD's sparse step ("Mind the box", Croce & Hein, 2021): :func:`sparse_sign`
    of the gradient with the fraction :math:`\kappa` of ``ctx.l1_sparsity`` (per
    example when a :class:`jaxadv.compose.SparsityCheckpoints` schedule adapts it).
    The quantile is taken over every coordinate: the loop does not zero the
    coordinates blocked by the box first (``mask_box`` is false), as in the
    authors' algorithm."""

    mask_box = False  # not a field: the loop reads it

    def init(self, x: Array) -> tuple[()]:
        return ()

    def lookahead(self, state: Any, x_t: Array, step_size: Array) -> Array:
        return x_t

    def update(self, grad: Array, state: Any, ctx: Context) -> tuple[Array, Any]:
        fraction = jnp.broadcast_to(jnp.asarray(ctx.l1_sparsity, jnp.float32), grad.shape[:1])
        return sparse_sign(grad, fraction), state


def _traced(value: ArrayLike) -> Array:
    return jnp.asarray(value, jnp.float32)


def steepest() -> Steepest:
    """:class:`Steepest`."""
    return Steepest()


def momentum(decay: ArrayLike = 1.0) -> Momentum:
    """:class:`Momentum` with decay :math:`\\mu` (traced; a finite number ``>= 0``)."""
    rule = Momentum(_traced(decay))
    rule.check()
    return rule


def nesterov(decay: ArrayLike = 1.0) -> Nesterov:
    """:class:`Nesterov` with decay :math:`\\mu` (traced; a finite number ``>= 0``)."""
    rule = Nesterov(_traced(decay))
    rule.check()
    return rule


def variance_tuning(
    decay: ArrayLike = 1.0, *, neighborhood: ArrayLike = 1.5, num_neighbors: int = 20
) -> VarianceTuning:
    """:class:`VarianceTuning` with decay :math:`\\mu`, neighbourhood factor
    :math:`\\beta` = ``neighborhood`` (traced; finite numbers ``>= 0``) and
    ``num_neighbors`` neighbours (static)."""
    if not isinstance(num_neighbors, int) or isinstance(num_neighbors, bool) or num_neighbors < 1:
        raise ValueError(f"num_neighbors must be a positive int, got {num_neighbors!r}")
    rule = VarianceTuning(_traced(decay), _traced(neighborhood), num_neighbors)
    rule.check()
    return rule


def heavy_ball(alpha: ArrayLike = 0.75) -> HeavyBall:
    """:class:`HeavyBall` with weight :math:`\\alpha` on the new step (traced; in ``[0, 1]``)."""
    rule = HeavyBall(_traced(alpha))
    rule.check()
    return rule


def sparse_steepest() -> SparseSteepest:
    """:class:`SparseSteepest`."""
    return SparseSteepest()
