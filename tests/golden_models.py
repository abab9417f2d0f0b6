"""Fixed models, inputs and attack configurations behind the golden-output pins.

``tests/golden/make_golden.py`` runs every case in :data:`CASES` once and stores
the outputs in ``tests/golden/attacks.npz``; ``tests/test_golden.py`` reruns the
same cases and compares. Nothing here is trained: the weights are drawn from
``jax.random.key(0)`` and scaled so that the clean predictions spread over
several classes, and the inputs are uniform in ``[0, 1]`` from a second fixed key.

Both models take ``[batch, 8, 8, 1]`` NHWC inputs and return ``[batch, 10]``
logits: a two-layer MLP on the flattened input and a small CNN (one 3x3
convolution with 4 channels, tanh, 2x2 average pooling, dense layer).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import training

BATCH = 8
CLASSES = 10
SHAPE = (8, 8, 1)


def mlp_apply(params: Any, x: jax.Array) -> jax.Array:
    """``relu((flat(x) - 0.5) W1 + b1) W2 + b2``."""
    w1, b1, w2, b2 = params
    h = jax.nn.relu((x.reshape(x.shape[0], -1) - 0.5) @ w1 + b1)
    return h @ w2 + b2


def cnn_apply(params: Any, x: jax.Array) -> jax.Array:
    """3x3 SAME convolution (NHWC), tanh, 2x2 average pooling, then a dense layer."""
    k, bk, w, b = params
    h = jax.lax.conv_general_dilated(
        x - 0.5, k, window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jnp.tanh(h + bk)
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
    return h.reshape(n, -1) @ w + b


class Setup(NamedTuple):
    """The two models, the inputs, their clean predictions as labels, and fixed targets."""

    mlp: Any
    cnn: Any
    x: jax.Array  # [BATCH, 8, 8, 1] in [0, 1]
    y_mlp: jax.Array  # [BATCH] int32, the MLP's clean predictions
    y_cnn: jax.Array  # [BATCH] int32, the CNN's clean predictions
    targets: jax.Array  # [BATCH] int32, never equal to y_mlp


@jax.jit
def _arrays() -> tuple[Any, Any, jax.Array, jax.Array, jax.Array, jax.Array]:
    # One compiled program: drawing the values op by op would compile each op.
    k = jax.random.split(jax.random.key(0), 8)
    features = int(np.prod(SHAPE))
    mlp_params = (
        3.0 * jax.random.normal(k[0], (features, 32)) / np.sqrt(features),
        0.1 * jax.random.normal(k[1], (32,)),
        3.0 * jax.random.normal(k[2], (32, CLASSES)) / np.sqrt(32),
        0.1 * jax.random.normal(k[3], (CLASSES,)),
    )
    cnn_params = (
        2.0 * jax.random.normal(k[4], (3, 3, 1, 4)) / 3.0,
        0.05 * jax.random.normal(k[5], (4,)),
        0.5 * jax.random.normal(k[6], (64, CLASSES)),
        0.05 * jax.random.normal(k[7], (CLASSES,)),
    )
    x = jax.random.uniform(jax.random.key(1), (BATCH, *SHAPE), jnp.float32)
    y_mlp = jnp.argmax(mlp_apply(mlp_params, x), axis=-1).astype(jnp.int32)
    y_cnn = jnp.argmax(cnn_apply(cnn_params, x), axis=-1).astype(jnp.int32)
    targets = (y_mlp + 1 + jnp.arange(BATCH, dtype=jnp.int32) % (CLASSES - 1)) % CLASSES
    return mlp_params, cnn_params, x, y_mlp, y_cnn, targets


def build() -> Setup:
    """Deterministically build the models and inputs (same values on every call)."""
    mlp_params, cnn_params, x, y_mlp, y_cnn, targets = _arrays()
    mlp = jaxadv.from_apply(mlp_apply, mlp_params)
    return Setup(mlp, jaxadv.from_apply(cnn_apply, cnn_params), x, y_mlp, y_cnn, targets)


def _key(i: int) -> jax.Array:
    return jax.random.key(100 + i)


# Each case maps (setup, extra keyword arguments) to the attack's output: an
# array, a result tuple with ``x_adv`` (and ``success``/``queries``), or a scalar loss.
# Attacks that stop per example on success use budgets small enough that some
# examples survive, so their later iterations, restarts and queries are pinned too.
Case = Callable[[Setup, dict[str, Any]], Any]

CASES: dict[str, Case] = {
    # --- single step
    "fgsm_linf": lambda s, kw: jaxadv.fgsm(s.mlp, s.x, s.y_mlp, eps=0.1, **kw),
    "fgsm_l2": lambda s, kw: jaxadv.fgsm(s.mlp, s.x, s.y_mlp, eps=0.5, norm="l2", **kw),
    "fgsm_l1": lambda s, kw: jaxadv.fgsm(s.mlp, s.x, s.y_mlp, eps=1.0, norm="l1", **kw),
    "fgsm_linf_targeted": lambda s, kw: jaxadv.fgsm(s.mlp, s.x, s.targets, eps=0.1, targeted=True, **kw),
    # --- iterative
    "bim_linf": lambda s, kw: jaxadv.bim(s.mlp, s.x, s.y_mlp, eps=0.1, steps=5, **kw),
    "bim_linf_targeted": lambda s, kw: jaxadv.bim(
        s.mlp, s.x, s.targets, eps=0.1, steps=5, targeted=True, **kw
    ),
    "pgd_linf": lambda s, kw: jaxadv.pgd(s.mlp, s.x, s.y_mlp, key=_key(0), eps=0.1, steps=5, **kw),
    "pgd_l2": lambda s, kw: jaxadv.pgd(s.mlp, s.x, s.y_mlp, key=_key(1), eps=0.5, steps=5, norm="l2", **kw),
    "pgd_l1": lambda s, kw: jaxadv.pgd(s.mlp, s.x, s.y_mlp, key=_key(2), eps=2.0, steps=5, norm="l1", **kw),
    "pgd_linf_cw_margin": lambda s, kw: jaxadv.pgd(
        s.mlp, s.x, s.y_mlp, key=_key(3), eps=0.1, steps=5, loss=jaxadv.cw_margin, **kw
    ),
    "pgd_linf_eps_array": lambda s, kw: jaxadv.pgd(
        s.mlp, s.x, s.y_mlp, key=_key(4), eps=np.linspace(0.0, 0.14, BATCH, dtype=np.float32), steps=5, **kw
    ),
    # --- momentum
    "mifgsm_linf": lambda s, kw: jaxadv.mifgsm(s.mlp, s.x, s.y_mlp, eps=0.1, steps=5, **kw),
    "mifgsm_l2": lambda s, kw: jaxadv.mifgsm(s.mlp, s.x, s.y_mlp, eps=0.5, steps=5, norm="l2", **kw),
    "mifgsm_di": lambda s, kw: jaxadv.mifgsm(
        s.cnn, s.x, s.y_cnn, eps=0.1, steps=5, diversity_prob=0.5, key=_key(5), **kw
    ),
    "mifgsm_early_stop": lambda s, kw: jaxadv.mifgsm(
        s.mlp, s.x, s.y_mlp, eps=0.02, steps=5, early_stop=True, **kw
    ),
    # --- APGD (pinned when early_stop was on by default: it is passed explicitly)
    "apgd_ce_linf": lambda s, kw: jaxadv.apgd(
        s.mlp, s.x, s.y_mlp, key=_key(6), eps=0.02, steps=10, num_restarts=2, early_stop=True, **kw
    ),
    "apgd_dlr_linf": lambda s, kw: jaxadv.apgd(
        s.mlp,
        s.x,
        s.y_mlp,
        key=_key(7),
        eps=0.02,
        steps=10,
        loss="dlr",
        num_restarts=2,
        early_stop=True,
        **kw,
    ),
    "apgd_ce_l2": lambda s, kw: jaxadv.apgd(
        s.mlp, s.x, s.y_mlp, key=_key(8), eps=0.1, steps=10, norm="l2", num_restarts=2, early_stop=True, **kw
    ),
    "apgd_dlr_l2": lambda s, kw: jaxadv.apgd(
        s.mlp,
        s.x,
        s.y_mlp,
        key=_key(9),
        eps=0.1,
        steps=10,
        norm="l2",
        loss="dlr",
        num_restarts=2,
        early_stop=True,
        **kw,
    ),
    "apgd_targeted": lambda s, kw: jaxadv.apgd_targeted(
        s.mlp, s.x, s.y_mlp, key=_key(10), eps=0.02, steps=10, num_target_classes=4, early_stop=True, **kw
    ),
    # --- score-based black box
    "spsa": lambda s, kw: jaxadv.spsa(
        s.mlp, s.x, s.y_mlp, key=_key(11), eps=0.02, queries=200, num_samples=4, **kw
    ),
    "nes": lambda s, kw: jaxadv.nes(
        s.mlp, s.x, s.y_mlp, key=_key(12), eps=0.02, queries=200, num_samples=4, **kw
    ),
    "square_linf": lambda s, kw: jaxadv.square(
        s.cnn, s.x, s.y_cnn, key=_key(13), eps=0.01, queries=100, **kw
    ),
    "square_l2": lambda s, kw: jaxadv.square(
        s.cnn, s.x, s.y_cnn, key=_key(14), eps=0.05, queries=100, norm="l2", **kw
    ),
    # --- minimal-perturbation and decision-based
    "deepfool": lambda s, kw: jaxadv.deepfool(s.mlp, s.x, s.y_mlp, steps=10, **kw),
    "cw_l2": lambda s, kw: jaxadv.cw_l2(
        s.mlp, s.x, s.y_mlp, steps=10, binary_search_steps=2, initial_const=0.1, **kw
    ),
    "hop_skip_jump": lambda s, kw: jaxadv.hop_skip_jump(
        s.mlp, s.x, s.y_mlp, key=_key(15), queries=200, init_evals=20, max_evals=50, **kw
    ),
    # --- adversarial training losses (scalars)
    "fast_at_loss": lambda s, kw: training.fast_at_loss(s.mlp, s.x, s.y_mlp, key=_key(16), eps=0.1, **kw),
    "pgd_at_loss": lambda s, kw: training.pgd_at_loss(
        s.mlp, s.x, s.y_mlp, key=_key(17), eps=0.1, step_size=0.03, steps=3, **kw
    ),
    "trades_loss": lambda s, kw: training.trades_loss(
        s.mlp, s.x, s.y_mlp, key=_key(18), eps=0.1, step_size=0.03, steps=3, beta=2.0, **kw
    ),
}

# Fields of a result tuple that are pinned besides ``x_adv``.
INFO_FIELDS = ("success", "queries")


def flatten(name: str, out: Any) -> dict[str, np.ndarray]:
    """Arrays to store for one case: ``name`` for the output (``x_adv`` of a
    result tuple), ``name.success`` / ``name.queries`` for the result fields present."""
    if hasattr(out, "x_adv"):
        arrays = {name: np.asarray(out.x_adv)}
        for field in INFO_FIELDS:
            if hasattr(out, field):
                arrays[f"{name}.{field}"] = np.asarray(getattr(out, field))
        return arrays
    return {name: np.asarray(out)}
