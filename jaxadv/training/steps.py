r"""Whole training steps: one compiled function per step, for Flax linen and NNX.

Linen (functional state):

.. code-block:: python

    variables = model.init(key, x0)                      # params (+ batch_stats)
    state = jaxadv.training.init_train_state(variables, tx)
    step = jaxadv.training.make_train_step(
        model, tx, method="pgd", eps=0.2, step_size=0.05, steps=5,
        train_kwargs={"train": True}, eval_kwargs={"train": False})
    state, metrics = step(state, x, y, key)

NNX (in-place state, :func:`flax.nnx.jit`):

.. code-block:: python

    optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)
    step = jaxadv.training.make_nnx_train_step(method="trades", eps=0.2, step_size=0.05, steps=5)
    metrics = step(module, optimizer, x, y, key)        # module in training mode

The attack inside the step runs the current parameters as traced values in
inference mode: for linen, ``model.apply(variables, x, mutable=False,
**eval_kwargs)`` (batch norm on its running averages, never updated; no
dropout); for NNX, a private copy viewed with ``deterministic=True,
use_running_average=True``. Only the method's training forward pass runs in
training mode (``train_kwargs`` for linen; the module as the caller left it for
NNX), so batch statistics are updated by that pass alone, exactly once per
step (once per replay for Free).

Methods: ``"clean"`` (cross-entropy on ``x``), ``"pgd"``
(:func:`~jaxadv.training.pgd_at_loss`), ``"fast"``
(:func:`~jaxadv.training.fast_at_loss`), ``"trades"``
(:func:`~jaxadv.training.trades_loss`); Free adversarial training has its own
builders, :func:`make_free_train_step` and :func:`make_nnx_free_train_step`,
because it carries a perturbation across steps.

Randomness: for linen, ``key`` is split once, ``attack_key, dropout_key =
jax.random.split(key)``; the attack uses ``attack_key`` exactly as the
corresponding loss uses ``key``, dropout uses ``dropout_key`` (rng stream
``"dropout"``), and Free's replay ``j`` uses ``jax.random.split(key, m)[j]`` for
dropout. For NNX, ``key`` is the attack's key and dropout draws from the
module's own ``nnx.Rngs``. The same key (and module state) gives bit-identical
steps.

Checks: the builders check the hyperparameters, which are constants of the
step, and raise ``ValueError`` naming the argument (``eps < 0``,
``step_size < 0``, ``steps < 1``, ``replays < 1``, ``beta < 0``, ``lo > hi``, an
unknown norm or method, a missing required value). The batch reaches the
compiled step as abstract values, so its *value* checks (labels in
``[0, C)``; ``x`` inside ``bounds`` for the adversarial methods) are skipped by
default, as in the attacks under ``jit``, and its shape checks always raise.
Run the value checks through :mod:`jax.experimental.checkify` with
``checked=True`` (every builder), or, for the linen builders,
:func:`jaxadv.checked`; the step then returns ``(err, outputs)`` and
``err.throw()`` raises the ``ValueError`` text of the first failed check:

.. code-block:: python

    step = jaxadv.training.make_train_step(model, tx, method="pgd", eps=0.2, step_size=0.05,
                                           steps=5, checked=True)
    err, (state, metrics) = step(state, x, y, key)
    err.throw()

The checks cost little compute but ``err.throw()`` waits for the step to
finish; use them while setting up a run, or every ``n`` steps.

Schedules: ``eps`` and ``step_size`` may be optax schedules (any callable
``count -> value``) of the number of optimizer updates so far,
``state.step`` for linen and ``optimizer.step`` for NNX (for Free, the update
of each replay). A linear eps ramp over the first epoch is what makes PGD-AT
train at a large radius (at eps = 0.3 on MNIST from the first step it stays
at chance accuracy):

.. code-block:: python

    eps = optax.linear_schedule(0.0, 0.3, transition_steps=steps_per_epoch)
    step = jaxadv.training.make_train_step(model, tx, method="pgd", eps=eps,
                                           step_size=lambda t: eps(t) / 4, steps=10)

The count is traced: the ramp never recompiles the step. Each schedule is
called once when the step is built (at count 0) to check that it gives a
scalar ``>= 0``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxadv import validation
from jaxadv.losses import mean_cross_entropy
from jaxadv.models import from_flax
from jaxadv.threat_models import clip_to_bounds, project, steepest_direction
from jaxadv.training.checks import ScalarOrSchedule, at_count, check_attack_config, check_bounds, check_labels
from jaxadv.training.losses import fast_at_loss, pgd_at_loss, trades_loss
from jaxadv.typing import Array, ArrayLike, Bounds, Norm, PRNGKey
from jaxadv.validation import check_in_bounds, check_steps
from jaxadv.validation import checked as checkify_checks

__all__ = [
    "TrainState",
    "init_train_state",
    "make_free_train_step",
    "make_train_step",
]

Method = Literal["clean", "pgd", "fast", "trades"]
METHODS: tuple[str, ...] = ("clean", "pgd", "fast", "trades")


class TrainState(NamedTuple):
    """Functional training state of a Flax linen model (a pytree of arrays).

    Attributes:
      params: the ``"params"`` collection.
      batch_stats: the ``"batch_stats"`` collection (``{}`` without batch norm).
      opt_state: the optax state of ``params``.
      step: int32 scalar, number of optimizer updates so far.
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    step: Array


def init_train_state(variables: Any, tx: optax.GradientTransformation) -> TrainState:
    """A :class:`TrainState` from linen ``variables`` (from ``model.init``) and an optax ``tx``."""
    if "params" not in variables:
        raise ValueError("variables must hold a 'params' collection (the result of model.init)")
    other = set(variables) - {"params", "batch_stats"}
    if other:
        raise ValueError(f"unsupported variable collections {sorted(other)}: only params and batch_stats")
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(params, batch_stats, tx.init(params), jnp.zeros((), jnp.int32))


# --- checks -------------------------------------------------------------------


def _check_hyper(
    method: str, eps: Any, step_size: Any, steps: Any, beta: Any, norm: str, bounds: Bounds
) -> dict[str, Any]:
    """The checked hyperparameters of ``method``, keyed like the losses' arguments."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (Free has make_free_train_step), got {method!r}")
    multi_step = method in ("pgd", "trades")
    norm, steps = check_attack_config(
        eps=eps,
        step_size=step_size,
        steps=steps,
        beta=beta,
        norm=norm,
        bounds=bounds,
        needs_eps=method != "clean",
        needs_step_size=multi_step,
        needs_steps=multi_step,
        method=method,
    )
    return dict(eps=eps, step_size=step_size, steps=steps, beta=beta, norm=norm, bounds=bounds)


def _compile(step: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.jit(step)``, with a second compiled copy for calls inside :func:`jaxadv.checked`.

    A jitted function reuses its first trace: traced without the value checks
    it would ignore ``jaxadv.checked``; traced with them it would fail outside.
    Each copy is only ever traced in one of the two modes.
    """
    plain = jax.jit(step)

    def step_with_checks(*args: Any) -> Any:
        return step(*args)

    with_checks = jax.jit(step_with_checks)

    @functools.wraps(step)
    def run(*args: Any) -> Any:
        return (with_checks if validation.checks_enabled() else plain)(*args)

    return run


def _method_loss(
    method: str,
    train_fn: Any,
    x: Array,
    y: Array,
    *,
    key: PRNGKey,
    attack_fn: Any,
    has_aux: bool,
    hyper: dict[str, Any],
    count: Array,
) -> Any:
    """The scalar loss (or ``(loss, aux)``) of ``method`` on one batch, with the
    scheduled hyperparameters at the step count ``count``."""
    if method == "clean":
        out = train_fn(x)
        logits, aux = out if has_aux else (out, None)
        z = logits.astype(jnp.float32)
        check_labels(y, x.shape[0], z.shape[-1])
        loss = mean_cross_entropy(z, y)
        return (loss, aux) if has_aux else loss
    common = dict(key=key, eps=hyper["eps"], norm=hyper["norm"], bounds=hyper["bounds"], count=count)
    common.update(attack_logits_fn=attack_fn, has_aux=has_aux)
    if method == "fast":
        return fast_at_loss(train_fn, x, y, step_size=hyper["step_size"], **common)
    common.update(step_size=hyper["step_size"], steps=hyper["steps"])
    if method == "pgd":
        return pgd_at_loss(train_fn, x, y, **common)
    return trades_loss(train_fn, x, y, beta=hyper["beta"], **common)


# --- linen --------------------------------------------------------------------


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _linen_train_fn(
    model: Any, params: Any, batch_stats: Any, kwargs: dict[str, Any], rng: PRNGKey
) -> Callable[[Array], tuple[Array, Any]]:
    """Training-mode forward pass ``x -> (logits, new batch_stats)``."""

    def fn(x: Array) -> tuple[Array, Any]:
        rngs = {"dropout": rng}
        if batch_stats:
            out, mutated = model.apply(
                _variables(params, batch_stats), x, mutable=["batch_stats"], rngs=rngs, **kwargs
            )
            return out, mutated["batch_stats"]
        return model.apply(_variables(params, batch_stats), x, rngs=rngs, **kwargs), batch_stats

    return fn


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    *,
    method: Method,
    eps: ScalarOrSchedule | None = None,
    step_size: ScalarOrSchedule | None = None,
    steps: int | None = None,
    beta: ArrayLike = 6.0,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    train_kwargs: dict[str, Any] | None = None,
    eval_kwargs: dict[str, Any] | None = None,
    jit: bool = True,
    checked: bool = False,
) -> Callable[[TrainState, Array, Array, PRNGKey], Any]:
    r"""Build ``step(state, x, y, key) -> (state, metrics)`` for a Flax linen model.

    One step computes the method's loss (the methods are listed in the module
    docstring) on the batch, its gradient with respect to
    ``state.params``, and applies ``tx``:

    .. math::
        g = \nabla_\theta \mathcal L_{\text{method}}(\theta; x, y),\quad
        (u, s') = \mathrm{tx.update}(g, s, \theta),\quad \theta' = \theta + u

    ``batch_stats`` are replaced by those of the training-mode forward pass
    (the attack's passes run in inference mode and cannot touch them).

    Args:
      model: a ``flax.linen.Module`` (hashable; captured by the step).
      tx: the optax optimizer of ``state.opt_state``.
      method: ``"clean"``, ``"pgd"``, ``"fast"`` or ``"trades"``.
      eps: attack radius in raw input units (``"pgd"``, ``"fast"``, ``"trades"``),
        or a schedule of ``state.step`` (see the module docstring).
      step_size: attack step (``"pgd"``/``"trades"``: required; ``"fast"``:
        default ``1.25 * eps``), or a schedule of ``state.step``.
      steps: attack steps (``"pgd"``/``"trades"``; static).
      beta: TRADES weight.
      norm, bounds: threat model of the attack.
      train_kwargs: keyword arguments of the training-mode ``apply`` (e.g.
        ``{"train": True}``); the ``"dropout"`` rng is always supplied.
      eval_kwargs: keyword arguments of the attack's inference-mode ``apply``
        (e.g. ``{"train": False}``); hashable values.
      jit: compile the step with :func:`jax.jit` (default). The hyperparameters
        are constants of the compiled step; ``state``, ``x``, ``y``, ``key`` are
        traced. Inside :func:`jaxadv.checked` a second compiled copy, with
        the value checks, runs instead.
      checked: run the batch's value checks through checkify (see the module
        docstring); the step then returns ``(err, (state, metrics))``. Without
        it, ``jaxadv.checked(step)`` does the same, and with ``jit=False`` a
        concrete bad batch raises at once.

    Returns:
      ``step(state: TrainState, x [B, ...], y [B], key) -> (TrainState, {"loss": scalar})``.

    Raises:
      ValueError: when built, for an unknown ``method`` or ``norm``, a missing
        ``eps``/``step_size``/``steps``, ``eps < 0``, ``step_size < 0``,
        ``steps < 1``, ``beta < 0`` or ``lo > hi``; when called, for labels or
        ``x`` of the wrong shape, and, with ``checked=True`` through
        ``err.throw()``, for labels outside ``[0, C)`` or ``x`` outside
        ``bounds`` (adversarial methods).
    """
    hyper = _check_hyper(method, eps, step_size, steps, beta, norm, bounds)
    train_kw = dict(train_kwargs or {})
    eval_kw = dict(eval_kwargs or {})

    def step(state: TrainState, x: Array, y: Array, key: PRNGKey) -> tuple[TrainState, dict[str, Array]]:
        attack_key, dropout_key = jax.random.split(key)

        def loss_fn(params: Any) -> tuple[Array, Any]:
            train_fn = _linen_train_fn(model, params, state.batch_stats, train_kw, dropout_key)
            attack_fn = from_flax(model, _variables(params, state.batch_stats), **eval_kw)
            return _method_loss(
                method, train_fn, x, y, key=attack_key, attack_fn=attack_fn, has_aux=True, hyper=hyper,
                count=state.step,
            )  # fmt: skip

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, batch_stats, opt_state, state.step + 1), {"loss": loss}

    return _finish(step, jit=jit, checked=checked)


def _finish(step: Callable[..., Any], *, jit: bool, checked: bool) -> Callable[..., Any]:
    out = checkify_checks(step) if checked else step
    return _compile(out) if jit else out


def _free_delta(delta: Array, grad: Array, eps: Any, norm: Norm) -> Array:
    r"""Free's step of size eps: :math:`\delta \leftarrow \Pi_{B_\epsilon}(\delta + \epsilon\, d_p(g))`."""
    eps = jnp.asarray(eps, jnp.float32)
    return project(delta + eps * steepest_direction(grad, norm), eps, norm).astype(delta.dtype)


def _check_free(eps: Any, replays: Any, norm: str, bounds: Bounds) -> tuple[Norm, int]:
    """The checked ``(norm, replays)`` of Free adversarial training."""
    if eps is None:
        raise ValueError("Free adversarial training needs eps=")
    norm, _ = check_attack_config(
        eps=eps,
        step_size=None,
        steps=None,
        beta=0.0,
        norm=norm,
        bounds=bounds,
        needs_eps=True,
        needs_step_size=False,
        needs_steps=False,
        method="free",
    )
    return norm, check_steps(replays, "replays")


def _free_loss(logits: Array, x: Array, y: Array) -> Array:
    """Mean cross-entropy of Free's replay, with the label checks."""
    z = logits.astype(jnp.float32)
    check_labels(y, x.shape[0], z.shape[-1])
    return mean_cross_entropy(z, y)


def make_free_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    *,
    eps: ScalarOrSchedule,
    replays: int,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    train_kwargs: dict[str, Any] | None = None,
    jit: bool = True,
    checked: bool = False,
) -> Callable[..., Any]:
    r"""Free adversarial training (Shafahi et al., 2019) for a Flax linen model.

    Builds ``step(state, delta, x, y, key) -> (state, delta, metrics)``. Each
    minibatch is replayed ``replays`` (:math:`m`) times; replay :math:`j` does
    *one* forward/backward pass of

    .. math::
        \mathcal L(\theta, \delta) = \tfrac1B\textstyle\sum_b
        \mathrm{CE}\big(f_\theta(\mathrm{clip}_{[lo,hi]}(x_b + \delta_b)), y_b\big)

    and uses both gradients it gives: :math:`\theta \leftarrow
    \mathrm{tx}(\nabla_\theta \mathcal L)` and :math:`\delta \leftarrow
    \Pi_{B_\epsilon}(\delta + \epsilon\, d_p(\nabla_\delta \mathcal L))`
    (``sign`` for L-inf), both from the same :math:`(\theta, \delta)`. The
    perturbation ``delta`` persists across replays *and* minibatches (start with
    ``jnp.zeros_like(x)``), so the batch size must be constant (drop the last
    incomplete batch). Run ``epochs / replays`` epochs for the budget of
    ``epochs`` clean epochs. The forward pass is in training mode
    (``train_kwargs``); batch statistics are updated once per replay.

    Args:
      model: a ``flax.linen.Module``.
      tx: optax optimizer.
      eps: radius (and the FGSM step on ``delta``), raw input units, or a
        schedule of the update count (replay ``j`` of a step uses
        ``eps(state.step + j)``).
      replays: :math:`m`, replays per minibatch (static).
      norm, bounds: threat model.
      train_kwargs: keyword arguments of the training ``apply``.
      jit: compile the step (the replays are an unrolled :func:`jax.lax.scan`).
      checked: run the batch's value checks (labels in ``[0, C)``, ``x``
        inside ``bounds``) through checkify; the step returns ``(err, (state,
        delta, metrics))``. See :func:`make_train_step`.

    Returns:
      ``step(state, delta [B, ...], x [B, ...], y [B], key) -> (state, delta,
      {"loss": mean loss over the replays})``; ``state.step`` grows by ``replays``.

    Raises:
      ValueError: when built, for ``eps`` missing or ``< 0``, ``replays < 1``,
        an unknown norm or ``lo > hi``; when called, as :func:`make_train_step`.
    """
    norm, replays = _check_free(eps, replays, norm, bounds)
    train_kw = dict(train_kwargs or {})
    lo, hi = bounds
    lo32, hi32 = check_bounds(bounds)

    def step(
        state: TrainState, delta: Array, x: Array, y: Array, key: PRNGKey
    ) -> tuple[TrainState, Array, dict[str, Array]]:
        if delta.shape != x.shape:
            raise ValueError(f"delta must have the shape of x {x.shape}, got {delta.shape}")
        check_in_bounds(jnp.asarray(x), lo32, hi32)

        def replay(carry: Any, inputs: tuple[PRNGKey, Array]) -> tuple[Any, Array]:
            params, batch_stats, opt_state, d = carry
            rng, count = inputs

            def loss_fn(params: Any, d: Array) -> tuple[Array, Any]:
                train_fn = _linen_train_fn(model, params, batch_stats, train_kw, rng)
                logits, new_stats = train_fn(clip_to_bounds(x + d, lo, hi))
                return _free_loss(logits, x, y), new_stats

            grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
            (loss, new_stats), (g_params, g_delta) = grad_fn(params, d)
            updates, opt_state = tx.update(g_params, opt_state, params)
            params = optax.apply_updates(params, updates)
            d = _free_delta(d, g_delta, at_count(eps, "eps", count), norm)
            return (params, new_stats, opt_state, d), loss

        carry = (state.params, state.batch_stats, state.opt_state, delta)
        # Unrolled: on XLA:CPU a convolution's gradients inside a loop body miss
        # the layout rewrites of a top-level program and run several times slower.
        counts = state.step + jnp.arange(replays, dtype=state.step.dtype)
        (params, batch_stats, opt_state, delta), losses = jax.lax.scan(
            replay, carry, (jax.random.split(key, replays), counts), unroll=True
        )
        new_state = TrainState(params, batch_stats, opt_state, state.step + replays)
        return new_state, delta, {"loss": jnp.mean(losses)}

    return _finish(step, jit=jit, checked=checked)
