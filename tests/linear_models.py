"""A linear classifier on flattened inputs, whose minimal adversarial perturbations are known exactly.

For logits :math:`z = \\mathrm{flat}(x) W + b` and predicted class :math:`y`, the
smallest perturbation in a norm :math:`\\|\\cdot\\|_p` (ignoring the box) that
makes class :math:`j` overtake :math:`y` has size
:math:`(z_y - z_j) / \\|W_{:,y} - W_{:,j}\\|_q`, :math:`q` the dual norm; the
distance to the decision boundary is the minimum over :math:`j \\ne y`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv

_DUAL_ORD = {"linf": 1, "l2": 2, "l1": np.inf}


def apply(params: Any, x: jax.Array) -> jax.Array:
    """``flat(x) @ w + b`` for ``params = (w, b)``."""
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b


def random_weights(seed: int, features: int = 64, classes: int = 4) -> np.ndarray:
    """Standard normal ``[features, classes]`` weights scaled by ``1 / sqrt(features)``."""
    w = np.random.default_rng(seed).normal(size=(features, classes)).astype(np.float32)
    return w / np.float32(np.sqrt(features))


def model(w: np.ndarray) -> Any:
    """The linear classifier with weights ``w`` and zero bias, as a jaxadv model."""
    return jaxadv.from_apply(apply, (jnp.asarray(w), jnp.zeros(w.shape[1], jnp.float32)))


def distance_to_boundary(x: np.ndarray, w: np.ndarray, norm: str) -> np.ndarray:
    """Exact smallest ``norm`` perturbation of each example that changes the model's label."""
    z = np.asarray(x).reshape(len(x), -1) @ w
    y = z.argmax(1)
    dual = _DUAL_ORD[norm]

    def nearest(i: int) -> float:
        others = [j for j in range(w.shape[1]) if j != y[i]]
        return min((z[i, y[i]] - z[i, j]) / np.linalg.norm(w[:, y[i]] - w[:, j], ord=dual) for j in others)

    return np.array([nearest(i) for i in range(len(x))])
