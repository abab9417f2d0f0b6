"""Bundled data and small models for demos, tests and notebooks.

The digits set (1,797 greyscale 8x8 images of handwritten digits, the UCI
"Optical Recognition of Handwritten Digits" test set, as distributed with
scikit-learn) ships inside the package, so everything here works offline.
"""

from __future__ import annotations

import importlib.resources
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv.models import predict
from jaxadv.typing import Array, ArrayLike

NUM_TRAIN = 1400


class Split(NamedTuple):
    """Images ``[n, 8, 8, 1]`` float32 in ``[0, 1]`` and int32 labels ``[n]``."""

    x: np.ndarray
    y: np.ndarray


def load_digits(seed: int = 0) -> tuple[Split, Split]:
    """The bundled digits set, shuffled with ``seed`` and split 1400 / 397.

    Returns:
      ``(train, test)``; pixels scaled from 0..16 to ``[0, 1]``, NHWC layout.
    """
    with importlib.resources.files("jaxadv").joinpath("data/digits.npz").open("rb") as f:
        data = np.load(f)
        images, labels = data["images"], data["labels"]
    order = np.random.default_rng(seed).permutation(len(labels))
    x = (images[order].astype(np.float32) / 16.0)[..., None]
    y = labels[order].astype(np.int32)
    return Split(x[:NUM_TRAIN], y[:NUM_TRAIN]), Split(x[NUM_TRAIN:], y[NUM_TRAIN:])


class DigitsCNN(nn.Module):
    """Two strided 3x3 convolutions and a linear head: 8x8x1 -> 10 logits."""

    features: tuple[int, int] = (32, 64)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.relu(nn.Conv(self.features[0], (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Conv(self.features[1], (3, 3), strides=(2, 2))(x))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class DigitsMLP(nn.Module):
    """A multilayer perceptron on flattened inputs."""

    hidden: tuple[int, ...] = (256, 256)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.reshape(x.shape[0], -1)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(self.num_classes)(x)


def train_classifier(
    model: nn.Module,
    data: Split,
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
) -> Any:
    """Train ``model`` with Adam and softmax cross-entropy; returns its variables.

    Deterministic for a given ``seed``. A few seconds on a CPU for the digits models.
    """
    key = jax.random.key(seed)
    variables = model.init(key, jnp.asarray(data.x[:1]))
    tx = optax.adam(learning_rate)
    opt_state = tx.init(variables)

    @jax.jit
    def step(variables: Any, opt_state: Any, xb: Array, yb: Array) -> tuple[Any, Any]:
        def loss_fn(v: Any) -> Array:
            logits = model.apply(v, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        grads = jax.grad(loss_fn)(variables)
        updates, opt_state = tx.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    rng = np.random.default_rng(seed)
    n = len(data.y)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            variables, opt_state = step(variables, opt_state, data.x[idx], data.y[idx])
    return variables


def accuracy(logits_fn: Any, x: ArrayLike, y: ArrayLike) -> float:
    """Fraction of ``x`` that ``logits_fn`` classifies as ``y``."""
    return float(jnp.mean(predict(logits_fn, x) == jnp.asarray(y)))
