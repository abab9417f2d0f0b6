r"""Adversarial training losses that drop into an ordinary JAX + optax loop.

Each loss is a scalar function of a model ``logits_fn`` whose gradient with
respect to the parameters held inside ``logits_fn`` is the training gradient of
its method:

.. code-block:: python

    def loss(variables, x, y, key):
        f = jaxadv.from_flax(model, variables)
        return jaxadv.training.pgd_at_loss(f, x, y, key=key, eps=0.2, step_size=0.05, steps=5)

    grads = jax.grad(loss)(variables, x, y, key)

The inner maximisation is the library's own attack (:func:`jaxadv.pgd` and
:func:`jaxadv.compose.run_from`), run on the *current*
parameters as traced values. It is never differentiated through: the attack
sees ``stop_gradient`` copies of the parameters and its result passes through
``stop_gradient`` before the outer loss (Madry et al., Wong et al. and Zhang et
al. all treat the adversarial example as a constant of the outer step). Under
the caller's ``jit``/``grad`` the attack is one :func:`jax.lax.fori_loop`.

Train and eval mode: the attack runs ``attack_logits_fn`` (default
``logits_fn``); the outer loss runs ``logits_fn``. For a model with batch norm
or dropout, pass the inference-mode model as ``attack_logits_fn`` (e.g.
``jaxadv.from_flax(model, variables, train=False)``, which can never update
batch statistics) and a training-mode ``logits_fn`` that returns
``(logits, aux)`` with ``has_aux=True`` (``aux``: e.g. the updated
``batch_stats``); the loss then returns ``(loss, aux)`` like
``jax.value_and_grad(..., has_aux=True)`` expects. A Flax NNX module can be
passed directly as ``logits_fn``: the attack then runs a private
inference-mode copy of it (:func:`jaxadv.from_nnx`) and the outer loss calls the
module itself, so ``nnx.value_and_grad`` records its batch-statistics updates.

Schedules: ``eps`` and ``step_size`` may be schedules of the training step
count, an optax schedule or any callable ``count -> value``, evaluated at
``count=`` (traced, so a new count never recompiles). A linear ramp of eps
over the first epoch keeps PGD-AT from stalling at chance accuracy when the
final radius is large:

.. code-block:: python

    eps = optax.linear_schedule(0.0, 0.3, transition_steps=steps_per_epoch)
    loss = jaxadv.training.pgd_at_loss(f, x, y, key=key, eps=eps,
                                       step_size=lambda t: eps(t) / 4, steps=10, count=step)

Checks: each loss raises ``ValueError`` (naming the argument) for an unknown
norm, ``steps < 1``, an empty batch, a ``key`` that is not one PRNG key, labels
of the wrong shape or dtype and, on concrete values, for ``eps < 0``,
``step_size < 0``, ``beta`` negative or not finite, ``lo > hi``, labels
outside ``[0, C)`` or not one-hot, and ``x`` outside ``bounds``. Under ``jit`` those values are
abstract and the value checks are skipped, as in the attacks; wrap the loss
with :func:`jaxadv.checked` to run them through checkify:

.. code-block:: python

    err, loss = jax.jit(jaxadv.checked(jaxadv.training.pgd_at_loss), static_argnames="steps")(
        f, x, y, key=key, eps=eps, step_size=0.05, steps=5)
    err.throw()  # ValueError text of the first failed check, if any
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.problem import check_step_size, prepare
from jaxadv.attacks.iterative import pgd, projected_gradient
from jaxadv.compose.loop import run_from
from jaxadv.keys import draw_rows, row_keys
from jaxadv.losses import kl_divergence, mean_cross_entropy
from jaxadv.models import from_nnx
from jaxadv.threat_models import project_to_feasible
from jaxadv.training.checks import ScalarOrSchedule, at_count, check_labels
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_finite, check_key, check_nonnegative, check_norm, check_steps

__all__ = ["fast_at_loss", "kl_divergence", "pgd_at_loss", "trades_loss"]


# --- shared plumbing ----------------------------------------------------------


def _attack_model(logits_fn: Any, attack_logits_fn: Any, has_aux: bool) -> LogitsFn:
    """The model the attack runs, with every parameter behind ``stop_gradient``."""
    from flax import nnx

    model = logits_fn if attack_logits_fn is None else attack_logits_fn
    if attack_logits_fn is None and has_aux:
        raise ValueError("has_aux=True needs attack_logits_fn= (a model returning logits only)")
    if isinstance(model, nnx.Module):
        model = from_nnx(model)
    # Array leaves only: a plain closure is a single non-array leaf and passes
    # unchanged (its captured values are then cut by the stop_gradient on x_adv).
    return jax.tree_util.tree_map(lambda v: jax.lax.stop_gradient(v) if _is_array(v) else v, model)


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _outer(logits_fn: Callable[[Array], Any], x: Array, has_aux: bool) -> tuple[Array, Any]:
    out = logits_fn(x)
    if has_aux:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError("with has_aux=True, logits_fn must return a pair (logits, aux)")
        return out[0].astype(jnp.float32), out[1]
    return out.astype(jnp.float32), None


def _result(loss: Array, aux: Any, has_aux: bool) -> Any:
    return (loss, aux) if has_aux else loss


def _batch(x: ArrayLike, y: ArrayLike, key: PRNGKey) -> tuple[Array, Array]:
    """``x`` and ``y`` as arrays; refuses an empty batch and a bad ``key``."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one example (the loss is a batch mean), got shape {x.shape}")
    if key is None:
        raise ValueError("key is required: it draws the attack's random start (pass key=jax.random.key(0))")
    check_key(key, per_example=True)
    return x, y


# --- the three losses -----------------------------------------------------------


def pgd_at_loss(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKey,
    eps: ScalarOrSchedule,
    step_size: ScalarOrSchedule,
    steps: int,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    attack_logits_fn: LogitsFn | None = None,
    has_aux: bool = False,
    count: ArrayLike | None = None,
) -> Any:
    r"""PGD adversarial training loss (Madry et al., 2018).

    .. math::
        \mathcal{L}(\theta) = \frac1B \sum_b \mathrm{CE}\big(f_\theta(\bar x_b), y_b\big),
        \qquad \bar x = \mathrm{sg}\big(\mathrm{PGD}_{\epsilon,\alpha,k}(f_{\mathrm{sg}(\theta)}, x, y)\big)

    where PGD starts from a uniform point of :math:`B_\epsilon(x)\cap[lo,hi]`
    and takes ``steps`` projected steepest-ascent steps of size ``step_size``
    on the cross-entropy (exactly :func:`jaxadv.pgd` with ``key``), and
    :math:`\mathrm{sg}` is ``stop_gradient``: the gradient is that of the
    cross-entropy at the (constant) adversarial batch.

    Args:
      logits_fn: the model being trained, ``x -> logits [batch, C]`` (or
        ``x -> (logits, aux)`` with ``has_aux``); a callable pytree such as
        :func:`jaxadv.from_flax` built on the parameters being differentiated,
        or a Flax NNX module.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` integer labels (or ``[batch, C]`` one-hot).
      key: PRNG key of the random start (the same key gives the same batch): one
        key, or a ``[batch]`` array of keys; each example starts from its own
        (:mod:`jaxadv.keys`).
      eps: radius in raw input units, scalar or ``[batch]`` (traced), or a
        schedule of the step count (see the module docstring).
      step_size: PGD step, scalar or ``[batch]`` (traced), or a schedule.
      steps: number of PGD steps (static).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      bounds: valid input box ``(lo, hi)``.
      attack_logits_fn: the model the attack runs (default ``logits_fn``);
        pass the inference-mode model for batch norm / dropout.
      has_aux: ``logits_fn`` returns ``(logits, aux)``; the loss returns
        ``(loss, aux)``.
      count: the training step count at which ``eps`` and ``step_size`` are
        evaluated when they are schedules (traced; required then).

    Returns:
      The scalar float32 loss (batch mean), or ``(loss, aux)``.

    Raises:
      ValueError: see the module docstring (bad ``eps``, ``step_size``,
        ``steps``, ``norm``, ``bounds``, labels, or ``x`` outside ``bounds``).
    """
    x, y = _batch(x, y, key)
    attack = _attack_model(logits_fn, attack_logits_fn, has_aux)
    x_adv = pgd(
        attack,
        jax.lax.stop_gradient(x),
        y,
        key=key,
        eps=at_count(eps, "eps", count),
        step_size=at_count(step_size, "step_size", count),
        steps=steps,
        norm=norm,
        bounds=bounds,
    )
    logits, aux = _outer(logits_fn, jax.lax.stop_gradient(x_adv), has_aux)
    return _result(mean_cross_entropy(logits, y), aux, has_aux)


def fast_at_loss(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKey,
    eps: ScalarOrSchedule,
    step_size: ScalarOrSchedule | None = None,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    attack_logits_fn: LogitsFn | None = None,
    has_aux: bool = False,
    count: ArrayLike | None = None,
) -> Any:
    r"""Fast adversarial training loss: FGSM from a random start (Wong et al., 2020).

    .. math::
        x_0 = \Pi(x + \delta_0),\ \delta_0 \sim U(B_\epsilon),\qquad
        \bar x = \mathrm{sg}\big(\Pi(x_0 + \alpha\, d_p(\nabla_x \mathrm{CE}(f(x_0), y)))\big),\qquad
        \mathcal{L} = \tfrac1B \textstyle\sum_b \mathrm{CE}(f(\bar x_b), y_b)

    with :math:`\Pi` the projection onto :math:`B_\epsilon(x)\cap[lo,hi]` and
    :math:`\alpha = 1.25\,\epsilon` by default (the paper's choice). One forward
    and backward pass for the attack, one for the update: about twice the cost
    of a clean step. Watch for catastrophic overfitting (PGD accuracy
    collapsing while FGSM accuracy soars) with
    :func:`jaxadv.training.robust_accuracy_monitor`.

    Args:
      logits_fn, x, y, key, eps, norm, bounds, attack_logits_fn, has_aux, count: as in
        :func:`pgd_at_loss`.
      step_size: :math:`\alpha`, default ``1.25 * eps`` (traced), or a schedule.

    Returns:
      The scalar float32 loss, or ``(loss, aux)``.

    Raises:
      ValueError: as :func:`pgd_at_loss`.
    """
    x, y = _batch(x, y, key)
    attack = _attack_model(logits_fn, attack_logits_fn, has_aux)
    eps_arr = check_nonnegative(at_count(eps, "eps", count), "eps")
    alpha = 1.25 * eps_arr if step_size is None else at_count(step_size, "step_size", count)
    x_adv = pgd(
        attack, jax.lax.stop_gradient(x), y, key=key, eps=eps_arr, step_size=alpha, steps=1, norm=norm,
        bounds=bounds,
    )  # fmt: skip
    logits, aux = _outer(logits_fn, jax.lax.stop_gradient(x_adv), has_aux)
    return _result(mean_cross_entropy(logits, y), aux, has_aux)


def trades_loss(
    logits_fn: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKey,
    eps: ScalarOrSchedule,
    step_size: ScalarOrSchedule,
    steps: int,
    beta: ArrayLike = 6.0,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    attack_logits_fn: LogitsFn | None = None,
    has_aux: bool = False,
    count: ArrayLike | None = None,
) -> Any:
    r"""TRADES loss (Zhang et al., 2019): accuracy plus a robustness regulariser.

    Inner maximisation (the clean distribution held fixed):

    .. math::
        q = \mathrm{sg}(\mathrm{softmax}(f(x))),\quad
        x_0 = \Pi(x + 0.001\,\mathcal N(0, I)),\quad
        \bar x = \mathrm{sg}\big(\text{$k$ projected steps ascending }
        \mathrm{KL}(q \,\|\, \mathrm{softmax}(f(x')))\big)

    Outer loss (both terms differentiated, :math:`\bar x` constant):

    .. math::
        \mathcal L = \frac1B\sum_b \Big[\mathrm{CE}(f(x_b), y_b)
        + \beta\, \mathrm{KL}\big(\mathrm{softmax}(f(x_b)) \,\|\, \mathrm{softmax}(f(\bar x_b))\big)\Big]

    :math:`\beta` trades clean accuracy for robustness (the paper uses 1 to 6).
    The clean and adversarial batches go through ``logits_fn`` as one
    concatenated batch ``[2B, ...]`` (one training-mode pass, so batch norm
    sees both halves and updates its statistics once).

    Args:
      logits_fn, x, y, key, eps, step_size, steps, norm, bounds, attack_logits_fn, has_aux, count:
        as in :func:`pgd_at_loss`.
      beta: weight of the KL term, a finite scalar ``>= 0`` (traced).

    Returns:
      The scalar float32 loss, or ``(loss, aux)``.

    Raises:
      ValueError: as :func:`pgd_at_loss`, and for ``beta`` negative or not finite.
    """
    norm = check_norm(norm)
    steps = check_steps(steps)
    beta = check_finite(beta, "beta", minimum=0.0)
    x, y = _batch(x, y, key)
    eps_now: ArrayLike = at_count(eps, "eps", count)
    step_now: ArrayLike = at_count(step_size, "step_size", count)
    attack = _attack_model(logits_fn, attack_logits_fn, has_aux)
    x_const = jax.lax.stop_gradient(x)
    q = jax.lax.stop_gradient(jax.nn.softmax(attack(x_const).astype(jnp.float32), axis=-1))
    # The attack's labels are q, so y is checked here (prepare checks x, eps and bounds).
    check_labels(y, x.shape[0], q.shape[-1])
    p = prepare(attack, x_const, q, bounds=bounds, eps=eps_now, soft_labels=True)
    alpha = check_step_size(step_now, p.x)
    keys = row_keys(key, p.x.shape[0])  # each example's start from its own key
    row = p.x.shape[1:]
    noise = 0.001 * draw_rows(lambda k: jax.random.normal(k, row, jnp.float32), keys)
    x_init = project_to_feasible(p.x + noise, p.x, p.eps, norm, p.lo, p.hi)
    trades = projected_gradient(norm=norm, loss=kl_divergence)
    x_adv = run_from(trades, p, x_init, key=keys, step_size=alpha, steps=steps, targeted=False, loop="auto")
    x_adv = jax.lax.stop_gradient(p.finalize(x_adv))
    batch = x.shape[0]
    logits, aux = _outer(logits_fn, jnp.concatenate([x_const, x_adv.astype(x.dtype)], axis=0), has_aux)
    clean, adv = logits[:batch], logits[batch:]
    robust = kl_divergence(adv, jax.nn.softmax(clean, axis=-1))
    loss = mean_cross_entropy(clean, y) + beta * jnp.mean(robust)
    return _result(loss, aux, has_aux)
