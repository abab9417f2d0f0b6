r"""Per-example losses that attacks ascend (or descend, when targeted).

Every loss has the signature ``loss(logits, onehot) -> [batch]`` with ``logits``
and ``onehot`` of shape ``[batch, num_classes]``. Attacks take the gradient of the
*sum* over the batch, so each example's gradient is independent of the others:
attacking a batch equals attacking each example alone.

An untargeted attack ascends the loss of the true label; a targeted attack
descends the loss of the target label. Custom losses are welcome: any hashable
callable with this signature (a module-level function compiles once; a new
``functools.partial`` object per call compiles once per object).

The losses stay finite, with finite gradients, for any finite logits however
large (:func:`log_softmax`; ratios on rescaled logits, see :func:`row_scale`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxadv.typing import Array, LossFn


def as_onehot(labels: Array, num_classes: int) -> Array:
    """Integer labels ``[batch]`` -> one-hot ``[batch, num_classes]`` float32.

    Float labels of shape ``[batch, num_classes]`` (one-hot or soft) pass through.
    """
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return labels.astype(jnp.float32)


def log_softmax(logits: Array) -> Array:
    r"""Log-softmax over the last axis, finite for any finite logits, in float32.

    With :math:`q = z - \max z`, the result is :math:`q - \log \sum_c e^{q_c}`,
    computed so that it stays right when the compiler computes :math:`z` once per
    use. Fused into each use, a model's last multiplication may be contracted with
    the subtraction into one fused multiply-add in one copy and not in another
    (seen with XLA's default optimisations and, more often, with its backend
    optimisations off), so two copies of :math:`q` can differ by half an ulp of
    :math:`z` (about ``3e4`` for logits near ``1e12``) and :math:`e^q` overflow or
    the sum underflow. So :math:`q` is set to exactly 0 at its own argmax
    (:math:`q - q`, which keeps the gradient), held at or below 0 elsewhere, and
    the sum, whose largest term is then 1, held at or above 1. Where the copies
    agree each of these is the identity. The result is finite and non-positive
    with a finite gradient (softmax minus one-hot).
    """
    z = logits.astype(jnp.float32)
    q = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    top = jnp.arange(q.shape[-1]) == jnp.argmax(q, axis=-1, keepdims=True)
    q = jnp.where(top, q - jax.lax.stop_gradient(q), jnp.where(q > 0, 0.0, q))
    total = jnp.sum(jnp.exp(q), axis=-1, keepdims=True)
    return q - jnp.log(jnp.where(total < 1, 1.0, total))


def finite_rows(logits: Array) -> Array:
    """``[batch]`` bool: every logit of the example is finite."""
    return jnp.all(jnp.isfinite(logits), axis=-1)


def _cross_entropy(logits: Array, onehot: Array) -> Array:
    logp = log_softmax(logits)
    return -jnp.sum(jnp.where(onehot != 0, onehot * logp, 0.0), axis=-1)


def _saturated_direction(logits: Array, onehot: Array) -> tuple[Array, Array]:
    r"""Where :math:`\mathrm{softmax}(z)\sum_c y_c - y` (the gradient of cross-entropy)
    underflows to 0 although it is not 0, its direction, from log-probabilities.

    That happens when all the label's mass is on the top class and every other
    logit is more than ~100 below it. The exact gradient is then
    :math:`S(p - e_{top})` with :math:`S = \sum_c y_c`; divided by
    :math:`S \sum_{j \ne top} p_j` it is :math:`-S` at the top class and
    :math:`S\,p_j / \sum_{k \ne top} p_k` elsewhere, all representable.

    Returns ``(direction [batch, C], used [batch] bool)``.
    """
    z = logits.astype(jnp.float32)
    logp = log_softmax(z)
    total = jnp.sum(onehot, axis=-1, keepdims=True)
    exact = jnp.exp(logp) * total - onehot
    top = jnp.arange(z.shape[-1]) == jnp.argmax(z, axis=-1, keepdims=True)
    others = jnp.where(top, -jnp.inf, logp)
    rest = jax.nn.logsumexp(others, axis=-1, keepdims=True)
    safe_rest = jnp.where(jnp.isfinite(rest), rest, 0.0)
    direction = total * jnp.where(top, -1.0, jnp.exp(others - safe_rest))
    used = jnp.all(exact == 0, axis=-1) & jnp.isfinite(rest[:, 0]) & (total[:, 0] != 0) & finite_rows(z)
    return jax.lax.stop_gradient(direction), jax.lax.stop_gradient(used)


@jax.custom_jvp
def cross_entropy(logits: Array, onehot: Array) -> Array:
    r"""Softmax cross-entropy :math:`-\sum_c y_c \log \mathrm{softmax}(z)_c`, per example.

    Finite for any finite logits (:func:`log_softmax`; classes with
    :math:`y_c = 0` contribute nothing even where their log-probability is
    :math:`-\infty`). Its gradient in the logits is
    :math:`\mathrm{softmax}(z)\sum_c y_c - y`, except where that underflows to
    exactly 0 although the true value is not (all of the label on the
    predicted class, every other logit more than ~100 below it): there the
    gradient is the true one's direction, scaled so its largest entry is
    :math:`\sum_c y_c` (:func:`_saturated_direction`). Gradient attacks move along
    directions, so a saturated but correctly classified example is still attacked
    instead of being left where it is.
    """
    return _cross_entropy(logits, onehot)


@cross_entropy.defjvp
def _cross_entropy_jvp(primals: tuple[Array, Array], tangents: tuple[Array, Array]) -> tuple[Array, Array]:
    logits, onehot = primals
    out, tangent = jax.jvp(_cross_entropy, primals, tangents)
    direction, used = _saturated_direction(logits, onehot)
    rescued = jnp.sum(direction * tangents[0].astype(jnp.float32), axis=-1)
    return out, jnp.where(used, rescued, tangent)


def cw_margin(logits: Array, onehot: Array) -> Array:
    r"""Carlini–Wagner margin :math:`\max_{j \ne y} z_j - z_y`, per example.

    Positive exactly when the model does not predict ``y``. Untargeted attacks
    ascend it (push another class above ``y``); targeted attacks descend it for
    the target ``t`` (push ``z_t`` above every other logit). It works on the
    logits, so it does not saturate like cross-entropy does.
    """
    z = logits.astype(jnp.float32)
    true = jnp.sum(jnp.where(onehot != 0, onehot * z, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot > 0, -jnp.inf, z), axis=-1)
    return other - true


def row_scale(z: Array) -> Array:
    """A per-example power of two ``[batch, 1]`` that brings ``max |z|`` near 1 when it
    exceeds ``2**64``, and 1 otherwise (exact to apply; no gradient flows through
    it). Ratio losses such as :func:`dlr` are computed on ``z * row_scale(z)``, so
    that differences of huge logits cannot overflow."""
    m = jnp.max(jnp.abs(z), axis=-1, keepdims=True)
    _, e = jnp.frexp(jnp.where(jnp.isfinite(m), m, 1.0))
    return jax.lax.stop_gradient(jnp.ldexp(jnp.ones_like(m), -jnp.where(e > 64, e, 0)))


def dlr(logits: Array, onehot: Array) -> Array:
    r"""Difference of logits ratio (Croce & Hein, 2020), per example.

    .. math::
        \mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}{z_{\pi_1} - z_{\pi_3}}

    with :math:`z_{\pi_1} \ge z_{\pi_2} \ge \dots` the sorted logits. Positive exactly
    when the model does not predict ``y``; invariant to shifting and rescaling the
    logits, so it does not reward a model for merely scaling its outputs. Needs at
    least three classes. Untargeted attacks ascend it (the "dlr" loss of
    :func:`jaxadv.apgd`).
    """
    z = logits.astype(jnp.float32)
    z = z * row_scale(z)  # the ratio is scale-invariant; the scale is exact (a power of two)
    top = -jnp.sort(-z, axis=-1)[:, :3]  # a sort: lax.top_k would all-gather a sharded batch
    true = jnp.sum(onehot * z, axis=-1)
    other = jnp.max(jnp.where(onehot > 0, -jnp.inf, z), axis=-1)
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Array, signed: Array) -> Array:
    r"""Targeted DLR loss of APGD-T (Croce & Hein, 2020), per example.

    .. math::
        \mathrm{DLR}_t(z, y) = -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2}

    with :math:`z_{\pi_1} \ge z_{\pi_2} \ge \dots` the sorted logits, :math:`y` the
    true class and :math:`t` the target. ``signed`` is ``onehot(y) - onehot(t)``
    (``[batch, C]``), so that the loss keeps the library's
    ``(logits, labels) -> [batch]`` signature; :func:`jaxadv.apgd_targeted` ascends
    it. Invariant to shifting and rescaling the logits; needs at least four
    classes.
    """
    z = logits.astype(jnp.float32)
    z = z * row_scale(z)  # scale-invariant ratio; the power-of-two scale keeps huge logits finite
    top = -jnp.sort(-z, axis=-1)[:, :4]  # a sort: lax.top_k would all-gather a sharded batch
    return -jnp.sum(signed * z, axis=-1) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def kl_divergence(logits: Array, target_probs: Array) -> Array:
    r"""Per-example :math:`\mathrm{KL}(q \,\|\, \mathrm{softmax}(z))`, a loss for the attacks.

    .. math::
        \mathrm{KL}(q \| p_z) = \sum_c q_c (\log q_c - \log \mathrm{softmax}(z)_c)

    with ``target_probs`` :math:`q` of shape ``[batch, C]`` (soft labels, e.g.
    the model's clean probabilities) and ``logits`` :math:`z` ``[batch, C]``.
    Returns ``[batch]`` float32; :math:`0 \log 0 = 0`. It has the signature of a
    library loss, so ``jaxadv.pgd(f, x, q, loss=kl_divergence, ...)`` ascends it
    (the inner maximisation of TRADES).
    """
    q = target_probs.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jax.scipy.special.xlogy(q, q) - q * logp, axis=-1)


def mean_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean over the batch of :func:`cross_entropy`: the training objective.

    ``labels``: ``[batch]`` integer classes or ``[batch, C]`` one-hot / soft labels.
    """
    return jnp.mean(cross_entropy(logits, as_onehot(labels, logits.shape[-1])))


_NAMED_LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "cross_entropy": cross_entropy,
    "cw": cw_margin,
    "cw_margin": cw_margin,
    "margin": cw_margin,
    "dlr": dlr,
    "kl": kl_divergence,
    "kl_divergence": kl_divergence,
}


def get_loss(loss: str | LossFn) -> LossFn:
    """The loss callable for ``loss``: a callable passes through; a name is looked up.

    Every attack that takes a ``loss`` accepts a callable ``(logits, onehot) ->
    [batch]`` or one of the names ``"ce"`` / ``"cross_entropy"``, ``"cw"`` /
    ``"cw_margin"`` / ``"margin"``, ``"dlr"``, ``"kl"`` / ``"kl_divergence"``
    (case-insensitive); this is the one place names are resolved.
    """
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss.lower() in _NAMED_LOSSES:
        return _NAMED_LOSSES[loss.lower()]
    raise ValueError(
        f"loss must be a callable (logits, onehot) -> [batch] or one of {sorted(_NAMED_LOSSES)}, got {loss!r}"
    )
