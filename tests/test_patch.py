"""Adversarial patches: exact placement, the mask, bounds, a loop of steps, success on the digits CNN."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxadv
from jaxadv.universal.patch import (
    adversarial_patch,
    apply_patch,
    init_patch,
    patch_step,
    patch_success_rate,
    place_patch,
    sample_placement,
    success_by_patch_size,
)


def _affine_apply(params: Any, x: jax.Array) -> jax.Array:
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b


@pytest.fixture(scope="module")
def linear() -> Any:
    """A random affine 10-class model of 8x8x1 inputs: cheap to compile, for the unit checks."""
    w = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    return jaxadv.from_apply(_affine_apply, (jnp.asarray(w), jnp.zeros(10, jnp.float32)))


@pytest.mark.parametrize("shape", [(3, 3), (2, 4)])
def test_scale_one_angle_zero_is_verbatim(digits: Any, shape: tuple[int, int]) -> None:
    x = digits[1].x[:4]
    h, w = shape
    patch = jax.random.uniform(jax.random.key(0), (h, w, 1))
    loc = np.array([[0, 0], [8 - h, 8 - w], [2, 3], [0, 8 - w]])
    out = np.asarray(apply_patch(x, patch, location=loc))
    _, mask = place_patch(patch, x.shape, location=loc)
    for b, (r, c) in enumerate(loc):
        np.testing.assert_array_equal(out[b, r : r + h, c : c + w], np.asarray(patch))
        inside = np.zeros((8, 8, 1), bool)
        inside[r : r + h, c : c + w] = True
        np.testing.assert_array_equal(out[b][~inside], x[b][~inside])
        np.testing.assert_array_equal(np.asarray(mask[b]), inside.astype(np.float32))


def test_quarter_turn_is_rot90(digits: Any) -> None:
    # theta = pi/2 turns the patch a quarter counterclockwise (as displayed, rows down).
    x = digits[1].x[:1]
    patch = jax.random.uniform(jax.random.key(1), (3, 3, 1))
    out = np.asarray(apply_patch(x, patch, location=(2, 4), angle=math.pi / 2))
    np.testing.assert_allclose(out[0, 2:5, 4:7], np.rot90(np.asarray(patch)), atol=1e-5)
    # Half a turn of a 2x2 patch at scale 2 covers a 4x4 block.
    placed, mask = place_patch(jnp.ones((2, 2, 1)), (1, 8, 8, 1), location=(3, 3), scale=2.0)
    assert float(jnp.sum(mask)) == pytest.approx(16.0, abs=1e-4)


def test_only_pixels_in_the_mask_change(digits: Any) -> None:
    x = digits[1].x[:64]
    patch = jax.random.uniform(jax.random.key(2), (3, 3, 1))
    key = jax.random.key(3)
    p = sample_placement(key, x.shape, patch.shape, scale_range=(0.6, 1.6), angle_range=(-1.0, 1.0))
    out = np.asarray(apply_patch(x, patch, location=p.location, scale=p.scale, angle=p.angle))
    _, mask = place_patch(patch, x.shape, location=p.location, scale=p.scale, angle=p.angle)
    outside = np.broadcast_to(np.asarray(mask) == 0, x.shape)
    np.testing.assert_array_equal(out[outside], x[outside])
    assert np.all(np.asarray(mask)[out != x] > 0)
    assert outside.mean() > 0.5 and (~outside).any()
    assert out.min() >= 0.0 and out.max() <= 1.0
    # A key draws the same placements.
    drawn = apply_patch(x, patch, key=key, scale_range=(0.6, 1.6), angle_range=(-1.0, 1.0))
    np.testing.assert_array_equal(np.asarray(drawn), out)
    assert float(jnp.min(p.scale)) >= 0.6 and float(jnp.max(p.scale)) <= 1.6


@pytest.mark.slow
def test_patch_stays_in_bounds_and_finite(linear: Any, digits: Any) -> None:
    # A huge learning rate drives entries against the bounds: they must be clipped.
    # The model's logits are NaN for one example of each batch: no NaN reaches the patch.
    def f(x: jax.Array) -> jax.Array:
        return linear(x).at[0].set(jnp.nan)

    batches = [(digits[0].x[i : i + 50], digits[0].y[i : i + 50]) for i in (0, 50, 100)]
    patch, apply_fn = adversarial_patch(
        f,
        batches,
        target=2,
        size=3,
        key=jax.random.key(4),
        optimizer=optax.adam(5.0),
        bounds=(-0.5, 1.0),
        loss="cw",
    )
    assert patch.shape == (3, 3, 1) and patch.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(patch)))
    assert float(jnp.min(patch)) >= -0.5 and float(jnp.max(patch)) <= 1.0
    assert bool(jnp.any((patch == -0.5) | (patch == 1.0)))
    x = digits[1].x[:5]
    out = np.asarray(apply_fn(x, location=(1, 2)))
    np.testing.assert_array_equal(out[:, 1:4, 2:5], np.broadcast_to(np.asarray(patch), (5, 3, 3, 1)))
    assert apply_fn(x, key=jax.random.key(0)).shape == x.shape


# Slow tier: trains a patch (a strength comparison).
@pytest.mark.slow
def test_trained_patch_beats_random_patch(cnn: Any, digits: Any) -> None:
    # A 5x5 patch at random placements (scale 0.8-1.2, rotation up to pi/8), target 3:
    # about 0.45 of the held-out digits not labelled 3 go to 3, under 0.05 with a random patch.
    train, test = digits
    batches = [(train.x[i : i + 100], train.y[i : i + 100]) for i in range(0, 1400, 100)]
    (row,) = success_by_patch_size(
        cnn.logits_fn, batches, test.x, test.y, target=3, sizes=[5], key=jax.random.key(0)
    )
    print(f"patch 5x5 target 3: success {row.success_rate:.3f}, random patch {row.random_success_rate:.3f}")
    assert row.size == 5 and row.area == 25 / 64
    assert row.success_rate > 0.3
    assert row.success_rate > row.random_success_rate + 0.25


def test_bad_inputs(linear: Any, digits: Any) -> None:
    x = digits[1].x[:4]
    patch = jnp.full((3, 3, 1), 0.5)
    opt = optax.adam(0.1)
    state = init_patch((3, 3, 1), opt)
    with pytest.raises(ValueError, match="exactly one of location"):
        apply_patch(x, patch)
    with pytest.raises(ValueError, match="exactly one of location"):
        apply_patch(x, patch, key=jax.random.key(0), location=(0, 0))
    with pytest.raises(ValueError, match="channels"):
        apply_patch(x, jnp.zeros((3, 3, 3)), location=(0, 0))
    with pytest.raises(ValueError, match="larger than the images"):
        apply_patch(x, jnp.zeros((9, 3, 1)), location=(0, 0))
    with pytest.raises(ValueError, match="NHWC"):
        apply_patch(x[..., 0], patch, location=(0, 0))
    with pytest.raises(ValueError, match="NaN"):
        apply_patch(np.where(np.arange(64).reshape(1, 8, 8, 1) == 5, np.nan, x), patch, location=(0, 0))
    with pytest.raises(ValueError, match="inside bounds"):
        apply_patch(x + 2.0, patch, location=(0, 0))
    with pytest.raises(ValueError, match="location must have shape"):
        apply_patch(x, patch, location=(0, 0, 0))
    with pytest.raises(ValueError, match="scale must be > 0"):
        apply_patch(x, patch, location=(0, 0), scale=0.0)
    with pytest.raises(ValueError, match="scale_range"):
        apply_patch(x, patch, key=jax.random.key(0), scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="angle_range"):
        sample_placement(jax.random.key(0), x.shape, (3, 3), angle_range=(0.0, math.inf))
    with pytest.raises(ValueError, match="target must be one integer"):
        patch_step(linear, state, x, key=jax.random.key(0), optimizer=opt, target=1.0)
    with pytest.raises(ValueError, match="labels in"):
        patch_step(linear, state, x, key=jax.random.key(0), optimizer=opt, target=10)
    with pytest.raises(ValueError, match="inside bounds"):
        patch_step(linear, state, x + 2.0, key=jax.random.key(0), optimizer=opt, target=1)
    with pytest.raises(ValueError, match="broadcast against the patch"):
        init_patch((3, 3, 1), opt, bounds=(np.zeros((8, 8, 1)), np.ones((8, 8, 1))))
    with pytest.raises(ValueError, match="finite bounds"):
        init_patch((3, 3, 1), opt, bounds=(0.0, math.inf))
    with pytest.raises(ValueError, match=r"\(h, w, C\)"):
        init_patch((3, 3), opt)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size must be"):
        adversarial_patch(linear, [x], target=1, size=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="target must be a class"):
        adversarial_patch(linear, [x], target=10, size=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="one-shot iterator"):
        adversarial_patch(linear, iter([x]), target=1, size=2, key=jax.random.key(0), epochs=2)
    with pytest.raises(ValueError, match="no non-empty batch"):
        adversarial_patch(linear, [x[:0]], target=1, size=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="target must be a class"):
        patch_success_rate(linear, patch, x, target=-1, location=(0, 0))
    new, metrics = patch_step(linear, state, x[:0], key=jax.random.key(0), optimizer=opt, target=1)
    assert new is state and np.isnan(float(metrics["loss"]))
