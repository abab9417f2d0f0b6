"""The small models of the test suite, in one place.

Three kinds:

* **Models with known answers** (no training, nothing random but the weights): an
  affine classifier ``flat(x) @ W + b`` whose minimal adversarial perturbations
  are known exactly (:func:`distance_to_boundary`), a two-class "score" model
  with logits ``(0, flat(x) . w + b)``, and variants built for one fault each
  (huge logits, NaN rows, an exact tie, a boundary at a given coordinate, a
  quadratic score). For logits :math:`z = \\mathrm{flat}(x) W + b` and predicted
  class :math:`y`, the smallest perturbation in a norm :math:`\\|\\cdot\\|_p`
  (ignoring the box) that makes class :math:`j` overtake :math:`y` has size
  :math:`(z_y - z_j) / \\|W_{:,y} - W_{:,j}\\|_q`, :math:`q` the dual norm; the
  distance to the decision boundary is the minimum over :math:`j \\ne y`.
* **Random MLPs** (fixed NumPy or JAX draws): a tanh MLP (the attack registry's
  model and the compilation tests'), a ReLU MLP of any depth (the certification
  tests').
* **Trained digits models** (:func:`trained_digits`): classifiers trained once
  by ``tests/weights/make_weights.py`` and stored in ``tests/weights/digits.npz``,
  so that no test process trains (``conftest.py``'s ``cnn``, ``cnn_b`` and
  ``mlp``).

Every ``*_apply`` is a module-level function: two models built from the same
function and parameter shapes share their compiled attack programs, across test
files too (the compilation cache is keyed on the function).
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import examples

_DUAL_ORD = {"linf": 1, "l2": 2, "l1": np.inf}


def flat(x: jax.Array) -> jax.Array:
    """``[batch, ...] -> [batch, features]``."""
    return x.reshape(x.shape[0], -1)


# --- affine classifiers with known minimal perturbations ---------------------------------


def apply(params: Any, x: jax.Array) -> jax.Array:
    """``flat(x) @ w + b`` for ``params = (w, b)``: ``[batch, ...] -> [batch, classes]``."""
    w, b = params
    return flat(x) @ w + b


affine_apply = apply


def random_weights(seed: int, features: int = 64, classes: int = 4) -> np.ndarray:
    """Standard normal ``[features, classes]`` weights scaled by ``1 / sqrt(features)``."""
    w = np.random.default_rng(seed).normal(size=(features, classes)).astype(np.float32)
    return w / np.float32(np.sqrt(features))


def affine(w: Any, b: Any = None) -> Any:
    """The affine classifier ``flat(x) @ w + b`` (``b`` defaults to zeros) as a jaxadv model."""
    w = jnp.asarray(w, jnp.float32)
    b = jnp.zeros(w.shape[1], jnp.float32) if b is None else jnp.asarray(b, jnp.float32)
    return jaxadv.from_apply(apply, (w, jnp.broadcast_to(b, (w.shape[1],))))


def model(w: np.ndarray) -> Any:
    """The linear classifier with weights ``w`` and zero bias, as a jaxadv model."""
    return affine(w)


def distance_to_boundary(x: np.ndarray, w: np.ndarray, norm: str) -> np.ndarray:
    """Exact smallest ``norm`` perturbation of each example that changes the model's label
    (for the zero-bias model of :func:`model`, ignoring the box)."""
    z = np.asarray(x).reshape(len(x), -1) @ w
    y = z.argmax(1)
    dual = _DUAL_ORD[norm]

    def nearest(i: int) -> float:
        others = [j for j in range(w.shape[1]) if j != y[i]]
        return min((z[i, y[i]] - z[i, j]) / np.linalg.norm(w[:, y[i]] - w[:, j], ord=dual) for j in others)

    return np.array([nearest(i) for i in range(len(x))])


def input_dropout_apply(params: Any, x: jax.Array, key: jax.Array) -> jax.Array:
    """A randomised model: the affine classifier of :func:`apply` behind dropout on its
    inputs (rate 1/2, kept features doubled), drawn from ``key``."""
    keep = jax.random.bernoulli(key, 0.5, x.shape)
    return apply(params, jnp.where(keep, 2.0 * x, 0.0))


def binary_apply(params: Any, x: jax.Array) -> jax.Array:
    """Two classes with logits ``(0, s)``, ``s = flat(x) . w + b``, for ``params = (w, b)``
    with ``w`` of shape ``[features]`` and a scalar ``b``: class 1 wins where ``s > 0``."""
    w, b = params
    score = flat(x) @ w + b
    return jnp.stack([jnp.zeros_like(score), score], axis=-1)


def binary(w: Any, b: Any = 0.0) -> Any:
    """The two-class score model of :func:`binary_apply`."""
    return jaxadv.from_apply(binary_apply, (jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)))


def quadratic_apply(params: Any, x: jax.Array) -> jax.Array:
    """Two classes with logits ``(0, s)``, ``s = sum(a x + c x^2) + b`` over the last axis,
    for ``params = (a, c, b)``."""
    a, c, b = params
    score = jnp.sum(a * x + c * x * x, axis=-1) + b
    return jnp.stack([jnp.zeros_like(score), score], axis=-1)


# --- models built for one fault each -----------------------------------------------------


def scaled_apply(params: Any, x: jax.Array) -> jax.Array:
    """``(flat(x) @ w) * scale`` for ``params = (w, scale)``: huge but finite logits."""
    w, scale = params
    return (flat(x) @ w) * scale


def scaled(w: Any, scale: float) -> Any:
    """The linear model of :func:`scaled_apply`."""
    return jaxadv.from_apply(scaled_apply, (jnp.asarray(w, jnp.float32), jnp.float32(scale)))


def nan_rows_apply(params: Any, x: jax.Array) -> jax.Array:
    """Linear (``flat(x) @ params``), except NaN logits for the rows whose first feature
    exceeds 0.5 (the NaN is selected, not added: its rows have a zero input gradient)."""
    f = flat(x)
    return jnp.where(f[:, :1] > 0.5, jnp.nan, f @ params)


def knobbed_apply(params: Any, x: jax.Array) -> jax.Array:
    """``(flat(x) @ w + b) * scale``, plus NaN where feature 0 exceeds ``nan_at`` and +inf
    where feature 1 exceeds ``inf_at``, for ``params = (w, b, scale, nan_at, inf_at)``: one
    structure (one compiled program per attack) for affine models with and without faults."""
    w, b, scale, nan_at, inf_at = params
    v = flat(x)
    z = (v @ w + b) * scale
    z = z + jnp.where(v[:, :1] > nan_at, jnp.nan, 0.0)
    return z + jnp.where(v[:, 1:2] > inf_at, jnp.inf, 0.0)


def knobbed(
    w: np.ndarray, b: Any = 0.0, scale: float = 1.0, nan_at: float = np.inf, inf_at: float = np.inf
) -> Any:
    """The model of :func:`knobbed_apply` (by default the plain affine classifier)."""
    b = jnp.broadcast_to(jnp.asarray(b, jnp.float32), (w.shape[1],))
    knobs = (jnp.float32(scale), jnp.float32(nan_at), jnp.float32(inf_at))
    return jaxadv.from_apply(knobbed_apply, (jnp.asarray(w), b, *knobs))


def tie_apply(params: Any, x: jax.Array) -> jax.Array:
    """Classes 0 and 1 tie exactly everywhere (argmax picks 0); classes 2 and 3 are lower."""
    s = jnp.sum(flat(x), axis=1) * params
    return jnp.stack([s, s, s - 1.0, s - 2.0], axis=1)


def boundary_apply(params: Any, x: jax.Array) -> jax.Array:
    """Class 1 exactly when the first feature exceeds ``params``."""
    f = flat(x)
    return jnp.stack([jnp.zeros(f.shape[0]), 100.0 * (f[:, 0] - params)], axis=1)


def constant_apply(params: Any, x: jax.Array) -> jax.Array:
    """The same logits ``params`` (``[classes]``) for every input of ``[batch, features]``."""
    return jnp.broadcast_to(params, (x.shape[0], params.shape[0])) + 0.0 * x[:, :1]


def sqrt_nan_apply(params: Any, x: jax.Array) -> jax.Array:
    """Logits ``(0, params)`` wherever ``x_0 >= 0``; NaN logits (through ``sqrt``) where
    ``x_0 < 0``, on ``[batch, features]`` inputs."""
    one = params + 0.0 * jnp.sqrt(x[:, 0])
    return jnp.stack([jnp.zeros_like(one), one], axis=-1)


def nan_or_inf_rows_apply(params: Any, x: jax.Array) -> jax.Array:
    """Linear (``flat(x) @ params``), except where the first feature exceeds 0.5: NaN logits
    in even rows of the batch, +inf logits in odd rows."""
    v = flat(x)
    bad = jnp.where(jnp.arange(v.shape[0]) % 2 == 0, jnp.nan, jnp.inf)
    return jnp.where(v[:, :1] > 0.5, bad[:, None], v @ params)


def antisymmetric_apply(params: Any, x: jax.Array) -> jax.Array:
    """Two classes with logits ``(-v . flat(x), v . flat(x))`` for ``params = v``."""
    return flat(x) @ jnp.stack([-params, params], 1)


def nonfinite_apply(params: Any, x: jax.Array) -> jax.Array:
    """``flat(x) @ params`` made non-finite everywhere: NaN logits in even rows of the
    batch, ``z * inf`` (+-inf, or NaN where ``z = 0``) in odd rows."""
    z = flat(x) @ params
    return jnp.where(jnp.arange(x.shape[0])[:, None] % 2 == 0, jnp.nan, z * jnp.inf)


# --- random MLPs ---------------------------------------------------------------------------


def tanh_mlp_apply(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """One tanh hidden layer on the flattened input: ``tanh(flat(x) W1 + b1) W2 + b2``."""
    h = jnp.tanh(flat(x) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def one_hidden_relu_apply(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``relu(flat(x) W1) W2 + b`` for ``params = {"w1", "w2", "b"}`` (no hidden bias)."""
    return jax.nn.relu(flat(x) @ params["w1"]) @ params["w2"] + params["b"]


def relu_mlp_apply(params: Any, x: jax.Array) -> jax.Array:
    """ReLU layers ``[(w, b), ...]`` on ``[batch, features]`` inputs, the last one affine."""
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def relu_mlp(seed: int, sizes: tuple[int, ...] = (6, 8, 8, 3)) -> Any:
    """A ReLU MLP with layer widths ``sizes`` and NumPy-drawn weights (nothing to compile)."""
    rng = np.random.default_rng(seed)
    params = [
        (
            jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32),
            jnp.asarray(rng.normal(size=b) * 0.3, jnp.float32),
        )
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    return jaxadv.from_apply(relu_mlp_apply, params)


class SmallCNN(nn.Module):
    """6x6x1 -> conv 3x3 stride 2 (4 channels) -> relu -> conv 2x2 (4) -> relu -> dense 3."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Conv(4, (2, 2))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


# --- trained digits models -----------------------------------------------------------------

WEIGHTS = pathlib.Path(__file__).resolve().parent / "weights" / "digits.npz"


class Recipe(NamedTuple):
    """How a stored digits model was trained, and the input normalisation its
    ``logits_fn`` applies (``jaxadv.from_flax``).

    ``noise_sigma = None``: :func:`jaxadv.examples.train_classifier` (Adam, clean
    cross-entropy); otherwise :func:`train_under_noise` with that noise level.
    """

    module: nn.Module
    seed: int = 0
    epochs: int = 30
    mean: float | None = None
    std: float | None = None
    noise_sigma: float | None = None


#: The trained models of ``tests/weights/digits.npz``, by name.
DIGITS_MODELS: dict[str, Recipe] = {
    "cnn": Recipe(examples.DigitsCNN(), seed=0),  # about 99% test accuracy
    "cnn_b": Recipe(examples.DigitsCNN(), seed=1),  # trained independently: a transfer target
    "mlp": Recipe(examples.DigitsMLP(), seed=0),
    # Small enough for the certification bounds to verify examples; normalised inputs.
    "mlp32": Recipe(examples.DigitsMLP(hidden=(32,)), seed=0, epochs=8, mean=0.3, std=0.4),
    # Trained under Gaussian noise (sigma 0.25): randomized smoothing certifies it.
    "noisy_mlp64": Recipe(examples.DigitsMLP(hidden=(64,)), seed=0, epochs=4, noise_sigma=0.25),
}


def train_under_noise(
    module: nn.Module, train: examples.Split, *, sigma: float, epochs: int, seed: int
) -> Any:
    """Variables of ``module`` trained with Adam (3e-3, batches of 64) on
    :func:`jaxadv.training.gaussian_augmentation_loss` at noise level ``sigma``
    (Cohen et al.'s augmentation)."""
    import optax

    from jaxadv import training

    variables = module.init(jax.random.key(seed), jnp.asarray(train.x[:1]))
    tx = optax.adam(3e-3)
    opt_state = tx.init(variables)

    @jax.jit
    def step(v: Any, opt_state: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> Any:
        def loss(v: Any) -> jax.Array:
            return training.gaussian_augmentation_loss(
                jaxadv.from_flax(module, v), x, y, key=key, sigma=sigma
            )

        updates, opt_state = tx.update(jax.grad(loss)(v), opt_state, v)
        return optax.apply_updates(v, updates), opt_state

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    for _ in range(epochs):
        order = rng.permutation(len(train.y))
        for start in range(0, len(order) - 63, 64):
            idx = order[start : start + 64]
            key, sub = jax.random.split(key)
            variables, opt_state = step(variables, opt_state, train.x[idx], train.y[idx], sub)
    return variables


def train(recipe: Recipe, data: examples.Split) -> Any:
    """Train ``recipe``'s module on ``data`` (what ``tests/weights/make_weights.py`` stores)."""
    if recipe.noise_sigma is None:
        return examples.train_classifier(recipe.module, data, seed=recipe.seed, epochs=recipe.epochs)
    return train_under_noise(
        recipe.module, data, sigma=recipe.noise_sigma, epochs=recipe.epochs, seed=recipe.seed
    )


class Trained(NamedTuple):
    """A Flax module, its variables, and the jaxadv model of both."""

    model: Any
    variables: Any
    logits_fn: Any


def trained_from(recipe: Recipe, variables: Any) -> Trained:
    """The :class:`Trained` model of ``recipe``'s module with ``variables``."""
    norm = {} if recipe.mean is None else {"mean": recipe.mean, "std": recipe.std}
    return Trained(recipe.module, variables, jaxadv.from_flax(recipe.module, variables, **norm))


def trained_digits(name: str) -> Trained:
    """The stored digits model ``name`` of :data:`DIGITS_MODELS`, read from
    ``tests/weights/digits.npz`` into the module's variable tree (shapes and dtypes
    checked against ``module.init``, evaluated abstractly: nothing is compiled)."""
    recipe = DIGITS_MODELS[name]
    template = jax.eval_shape(recipe.module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.float32))
    leaves = flax.traverse_util.flatten_dict(template, sep="/")
    with np.load(WEIGHTS) as stored:
        missing = sorted(f"{name}/{path}" for path in leaves if f"{name}/{path}" not in stored)
        if missing:
            raise KeyError(f"{WEIGHTS} lacks {missing}: rerun tests/weights/make_weights.py")
        arrays = {}
        for path, leaf in leaves.items():
            value = stored[f"{name}/{path}"]
            if value.shape != leaf.shape or value.dtype != leaf.dtype:
                raise ValueError(f"{name}/{path}: stored {value.dtype}{value.shape}, module wants {leaf}")
            arrays[path] = jnp.asarray(value)
    return trained_from(recipe, flax.traverse_util.unflatten_dict(arrays, sep="/"))
