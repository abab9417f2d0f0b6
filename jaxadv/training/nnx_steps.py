"""Adversarial training steps for Flax NNX modules: :func:`make_nnx_train_step` and
:func:`make_nnx_free_train_step`, the NNX counterparts of
:mod:`jaxadv.training.steps`' linen steps, with the same methods and checks."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax.numpy as jnp

from jaxadv.threat_models import clip_to_bounds
from jaxadv.training.checks import ScalarOrSchedule, at_count, check_bounds
from jaxadv.training.steps import Method, _check_free, _check_hyper, _free_delta, _free_loss, _method_loss
from jaxadv.typing import Array, ArrayLike, Bounds, Norm, PRNGKey
from jaxadv.validation import check_in_bounds
from jaxadv.validation import checked as checkify_checks

__all__ = ["make_nnx_free_train_step", "make_nnx_train_step"]


def _nnx_checked(body: Callable[..., Any], module: Any, optimizer: Any, *args: Any) -> tuple[Any, Any]:
    """``body(module, optimizer, *args)`` with its value checks run through checkify.

    Checkify cannot wrap in-place updates of objects created outside it, so the
    body runs on a functional copy (split, merge, run, update back).
    """
    from flax import nnx

    graphdef, state = nnx.split((module, optimizer))

    def pure(state: Any, *args: Any) -> tuple[Any, Any]:
        m, o = nnx.merge(graphdef, state, copy=True)
        out = body(m, o, *args)
        return out, nnx.state((m, o))

    err, (out, new_state) = checkify_checks(pure)(state, *args)
    nnx.update((module, optimizer), new_state)
    return err, out


def make_nnx_train_step(
    *,
    method: Method,
    eps: ScalarOrSchedule | None = None,
    step_size: ScalarOrSchedule | None = None,
    steps: int | None = None,
    beta: ArrayLike = 6.0,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    checked: bool = False,
) -> Callable[..., Any]:
    r"""Build ``step(module, optimizer, x, y, key) -> metrics`` for a Flax NNX model.

    The same methods and maths as :func:`make_train_step`. The step is one
    :func:`flax.nnx.jit` program: the loss is differentiated with
    :func:`flax.nnx.value_and_grad` with respect to the module's ``nnx.Param``
    variables and ``optimizer.update(module, grads)`` applies the optax update
    in place. Put the module in training mode first (e.g. ``module.train()``
    or ``nnx.view(..., use_running_average=False, deterministic=False)``); the
    attack always runs a private inference-mode copy of the current module
    (:func:`jaxadv.from_nnx`), and only the method's training pass updates
    ``nnx.BatchStat`` variables. Dropout draws from the module's own
    ``nnx.Rngs``; ``key`` drives the attack.

    Args:
      method, eps, step_size, steps, beta, norm, bounds: as in :func:`make_train_step`
        (a schedule is evaluated at ``optimizer.step``).
      checked: run the batch's value checks through checkify; the step returns
        ``(err, metrics)`` (the module and optimizer are still updated in
        place). :func:`jaxadv.checked` cannot wrap an in-place NNX step; this
        flag is its counterpart.

    Returns:
      ``step(module, optimizer: nnx.Optimizer, x [B, ...], y [B], key) -> {"loss": scalar}``.

    Raises:
      ValueError: as :func:`make_train_step`.
    """
    from flax import nnx

    hyper = _check_hyper(method, eps, step_size, steps, beta, norm, bounds)

    def body(module: Any, optimizer: Any, x: Array, y: Array, key: PRNGKey) -> dict[str, Array]:
        count = optimizer.step.value

        def loss_fn(m: Any) -> Array:
            return _method_loss(
                method, m, x, y, key=key, attack_fn=None, has_aux=False, hyper=hyper, count=count
            )

        loss, grads = nnx.value_and_grad(loss_fn)(module)
        optimizer.update(module, grads)
        return {"loss": loss}

    if checked:
        return nnx.jit(functools.partial(_nnx_checked, body))
    return nnx.jit(body)


def make_nnx_free_train_step(
    *,
    eps: ScalarOrSchedule,
    replays: int,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    checked: bool = False,
) -> Callable[..., Any]:
    r"""Free adversarial training (Shafahi et al., 2019) for a Flax NNX model.

    ``step(module, optimizer, delta, x, y) -> (delta, metrics)``: the algorithm
    of :func:`make_free_train_step` (one backward pass per replay giving both
    :math:`\nabla_\theta` and :math:`\nabla_\delta`), with the module and
    optimizer updated in place inside one :func:`flax.nnx.jit` program. The
    ``replays`` replays are unrolled in the program (keep ``replays`` small, as
    the paper's 4 to 10).

    Args:
      eps, replays, norm, bounds: as in :func:`make_free_train_step` (a schedule
        of ``optimizer.step``, read before each replay's update).
      checked: as in :func:`make_nnx_train_step`; the step returns
        ``(err, (delta, metrics))``.

    Returns:
      ``step(module, optimizer, delta [B, ...], x [B, ...], y [B]) -> (delta, {"loss": mean loss})``.

    Raises:
      ValueError: as :func:`make_free_train_step`.
    """
    from flax import nnx

    norm, replays = _check_free(eps, replays, norm, bounds)
    lo, hi = bounds
    lo32, hi32 = check_bounds(bounds)

    def body(module: Any, optimizer: Any, delta: Array, x: Array, y: Array) -> tuple[Array, dict[str, Array]]:
        if delta.shape != x.shape:
            raise ValueError(f"delta must have the shape of x {x.shape}, got {delta.shape}")
        check_in_bounds(jnp.asarray(x), lo32, hi32)

        def loss_fn(m: Any, d: Array) -> Array:
            return _free_loss(m(clip_to_bounds(x + d, lo, hi)), x, y)

        total = jnp.zeros((), jnp.float32)
        for _ in range(replays):
            loss, (g_params, g_delta) = nnx.value_and_grad(loss_fn, argnums=(0, 1))(module, delta)
            eps_now = at_count(eps, "eps", optimizer.step.value)
            optimizer.update(module, g_params)
            delta = _free_delta(delta, g_delta, eps_now, norm)
            total = total + loss
        return delta, {"loss": total / replays}

    if checked:
        return nnx.jit(functools.partial(_nnx_checked, body))
    return nnx.jit(body)
