r"""Searches over one scalar per example, shared by the attacks that search.

* Bisection (:func:`midpoint`, :func:`narrow`): an interval
  :math:`[lower, upper]` per example whose upper end satisfies a predicate
  (adversarial, say) and whose lower end does not; each step tests the
  midpoint and keeps the half that still brackets the change. FAB's final
  search along its segment, FMN's search for the smallest adversarial
  point, and HopSkipJump's move onto the decision boundary.
* Bracketing (:func:`bracket`): the search for the smallest constant that
  makes an optimisation succeed, when no upper end is known yet: the constant
  grows tenfold until a success bounds it, then bisects. The constant of CW
  and of EAD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxadv.typing import Array

#: The "no upper end yet" of :func:`bracket`.
UNBOUNDED = 1e10


def midpoint(lower: Array, upper: Array) -> Array:
    """``[batch]`` midpoints of the intervals."""
    return 0.5 * (lower + upper)


def narrow(
    lower: Array, upper: Array, mid: Array, hit: Array, active: Array | None = None
) -> tuple[Array, Array]:
    """One bisection step: ``mid`` becomes the upper end where ``hit`` holds at it, the
    lower end elsewhere; examples where ``active`` is False keep their interval."""
    if active is None:
        return jnp.where(hit, lower, mid), jnp.where(hit, mid, upper)
    return jnp.where(active & ~hit, mid, lower), jnp.where(active & hit, mid, upper)


@jax.jit
def bracket(hit: Array, const: Array, lower: Array, upper: Array) -> tuple[Array, Array, Array]:
    """The next constant of a bracketing search, and its bounds.

    A success (``hit``) at ``const`` makes it an upper bound, a failure a lower
    bound. Once an upper bound is known the next constant is the midpoint of the
    bounds; before that it stays where it succeeded and grows tenfold where it failed.

    Returns:
      ``(const, lower, upper)``, each ``[batch]``.
    """
    upper = jnp.where(hit, jnp.minimum(upper, const), upper)
    lower = jnp.where(hit, lower, jnp.maximum(lower, const))
    bounded = upper < UNBOUNDED
    const = jnp.where(bounded, midpoint(lower, upper), jnp.where(hit, const, const * 10.0))
    return const, lower, upper
