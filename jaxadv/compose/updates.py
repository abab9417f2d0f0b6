r"""Update rules: how an iterative attack turns gradients into a step direction.

A rule has the shape of an optax transformation:

* ``init(x) -> state``: its state for a batch of iterates ``x``;
* ``lookahead(state, x_t, step_size) -> point``: where the next gradient is
  taken (``x_t`` itself except for Nesterov's look-ahead);
* ``update(grad, state, ctx) -> (direction, state)``: the direction of the
  step from ``x_t``, which the loop scales by ``step_size`` and projects.

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

from jaxadv.compose.sources import _pytree
from jaxadv.keys import draw_rows, fold_rows, row_keys
from jaxadv.threat_models import per_example, steepest_direction, step_along, unit_l1
from jaxadv.typing import Array, ArrayLike, Norm, PRNGKey
from jaxadv.validation import check_finite

__all__ = [
    "Context",
    "Momentum",
    "Nesterov",
    "Steepest",
    "UpdateRule",
    "VarianceTuning",
    "momentum",
    "nesterov",
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
      l1_sparsity: fraction of coordinates an L1 direction moves (static).
      grad_at: ``grad_at(point, keys) -> [batch, ...]``: the source's gradient at
        another point (0 where it is not finite), ``keys`` ``[batch]``.
    """

    x_t: Array
    key: PRNGKey
    eps: Array
    norm: Norm
    l1_sparsity: float
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
