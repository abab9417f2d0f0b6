"""The model zoo without PyTorch: every listed architecture builds and traces, remat keeps
the variable tree, and bad names or states are refused.

The conversions from PyTorch checkpoints, compared logit by logit with RobustBench's
own architectures, are in ``test_zoo.py`` (the slow tier: they need PyTorch).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

import jaxadv
from jaxadv import zoo


def _input_gradient(logits_fn: Any, x: jax.Array) -> jax.Array:
    return jax.grad(lambda v: jnp.sum(jax.nn.log_softmax(logits_fn(v))[:, 0]))(x)


def test_build_every_listed_architecture() -> None:
    for name in zoo.ARCHITECTURES:
        assert zoo.build(name, num_classes=7).num_classes == 7
    # Traced here: listed names that no conversion test of test_zoo.py traces (the deepest,
    # dm-wrn-106-16, aside).
    for name in ("wrn-34-20", "dm-wrn-28-10", "dm-wrn-34-20"):
        x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
        out, _ = jax.eval_shape(zoo.build(name, num_classes=7).init_with_output, jax.random.key(0), x)
        assert out.shape == (2, 7), name
    with pytest.raises(ValueError, match="no attribute"):
        zoo.build("wrn-28-10", widen_factor=10)


@pytest.mark.parametrize(
    ("arch", "state", "match"),
    [
        ("wrn-27-10", {}, "depth = 6 n \\+ 4"),
        ("resnet-20", {}, "unsupported depth 20"),
        ("wrn-28-10", [1, 2], "expected a state dict"),
    ],
)
def test_bad_architecture_or_state_is_refused(arch: str, state: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zoo.from_torch(arch, state)


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("dm-wrn-10-1", {}),
        ("preact-resnet-18", {}),
        ("dm-preact-resnet-18", {}),
        ("cifar-resnet-18", {}),  # its blocks are the ImageNet ResNet's
        ("vit-ti-8", {"image_size": 32, "depth": 2}),
    ],
)
def test_remat_keeps_every_architecture_s_variable_tree(arch: str, config: dict[str, Any]) -> None:
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    barriers = []
    trees = []
    for remat in (False, True):
        module = zoo.build(arch, remat=remat, **config)
        abstract = jax.eval_shape(module.init, jax.random.key(0), x)
        trees.append(jax.tree.map(lambda a: (a.shape, a.dtype), abstract))
        lowered = jax.jit(_input_gradient).lower(jaxadv.from_flax(module, abstract), x).as_text()
        barriers.append(lowered.count("optimization_barrier"))
    assert trees[0] == trees[1]
    # remat=True wraps the blocks: the gradient's program recomputes them behind barriers.
    assert barriers[0] == 0 and barriers[1] > 0
