"""The model zoo: Flax architectures that reproduce RobustBench's PyTorch models from their weights.

Checkpoints cannot be downloaded in the tests, so each reference model is built
in PyTorch with random weights *and* random batch-norm statistics (eval mode),
converted with :func:`jaxadv.zoo.from_torch`, and both are run on the same
random inputs; the logits must agree to ``1e-5`` relative to the largest logit.

The references are RobustBench's own architecture files
(``robustbench/model_zoo/architectures/{wide_resnet,resnet,dm_wide_resnet}.py``,
which import only PyTorch), loaded by file path so that the ``robustbench``
package and its heavy dependencies are never imported. torchvision (ImageNet
ResNets) and timm (ViT) are not dependencies: their layouts are written out
below as small PyTorch references with the same state dict keys.

Depth and width: every architecture is checked at the size RobustBench uses,
except DeepMind's WRN-70-16 (267M parameters): its class is checked numerically
at a reduced depth and width, and the full 70-16 by converting a zero-cost
state dict with the real keys and shapes (PyTorch's ``meta`` device) and
tracing the result with :func:`jax.eval_shape`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv import zoo

# Cross-checks against PyTorch references: the slow tier (see tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.crosscheck]

torch = pytest.importorskip("torch")
tnn = torch.nn

# max |jax - torch| / max |torch logit|. Correct conversions agree to ~1e-6 here; 1e-5
# (tighter than the 1e-4 promised) makes near-misses fail, e.g. tanh-approximate GELU (~5e-5).
TOLERANCE = 1e-5


@functools.cache
def _robustbench(name: str) -> ModuleType:
    """``robustbench/model_zoo/architectures/<name>.py``, without importing ``robustbench``."""
    found = importlib.util.find_spec("robustbench")
    if found is None or not found.submodule_search_locations:
        pytest.skip("needs robustbench's architecture files: pip install --no-deps robustbench")
    path = Path(list(found.submodule_search_locations)[0]) / "model_zoo" / "architectures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_robustbench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomise(model: Any, seed: int) -> Any:
    """Random normalisation parameters and statistics, random biases; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (tnn.BatchNorm2d, tnn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            if isinstance(m, tnn.Linear):
                # Wider than the default init, so that pre-activations reach where
                # activation functions (e.g. exact vs approximate GELU) differ.
                m.weight.normal_(0.0, 2.0 / m.in_features**0.5, generator=g)
            if isinstance(m, (tnn.Linear, tnn.Conv2d)) and m.bias is not None:
                m.bias.normal_(0.0, 0.5, generator=g)
    return model.eval()


def _inputs(size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (2, size, size, 3)).astype(np.float32)


def _torch_logits(model: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _gap(model: Any, module: Any, variables: Any, x: np.ndarray) -> float:
    """Relative disagreement of the converted model with the PyTorch one on ``x``."""
    reference = _torch_logits(model, x)
    logits_fn = jaxadv.from_flax(module, variables)
    out = np.asarray(jax.jit(lambda f, v: f(v))(logits_fn, jnp.asarray(x)))
    assert out.shape == reference.shape
    return float(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))


def _zero_cost(meta_model: Any) -> dict[str, np.ndarray]:
    """A model built on PyTorch's ``meta`` device -> zero-stride arrays with its real keys and shapes."""
    return {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in meta_model.state_dict().items()}


def _n_params(variables: Any) -> int:
    return sum(a.size for a in jax.tree.leaves(variables["params"]))


def _build(factory: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return _randomise(factory(), seed)


# ---------------------------------------------------------------------------
# PyTorch references for the layouts that RobustBench takes from other packages.


class _TVBlock(tnn.Module):
    """torchvision's ``BasicBlock`` (``width=None``) or ``Bottleneck``."""

    def __init__(self, inplanes: int, planes: int, stride: int, width: int | None) -> None:
        super().__init__()
        self.bottleneck = width is not None
        if width is not None:
            out_planes = 4 * planes
            self.conv1 = tnn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(width)
            self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(width)
            self.conv3 = tnn.Conv2d(width, out_planes, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(out_planes)
        else:
            out_planes = planes
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != out_planes:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(inplanes, out_planes, 1, stride, bias=False), tnn.BatchNorm2d(out_planes)
            )

    def forward(self, x: Any) -> Any:
        relu = torch.relu
        out = relu(self.bn1(self.conv1(x)))
        if self.bottleneck:
            out = self.bn3(self.conv3(relu(self.bn2(self.conv2(out)))))
        else:
            out = self.bn2(self.conv2(out))
        return relu(out + (x if self.downsample is None else self.downsample(x)))


class _TVResNet(tnn.Module):
    """torchvision's ``ResNet`` (v1.5): 7x7 stem, max pooling, four stages, ``fc``."""

    def __init__(self, depth: int, num_classes: int, width_factor: int = 1) -> None:
        super().__init__()
        stages = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for s, (blocks, planes) in enumerate(zip(stages, (64, 128, 256, 512), strict=True)):
            layer = []
            for i in range(blocks):
                width = planes * width_factor if depth >= 50 else None
                layer.append(_TVBlock(inplanes, planes, 2 if s > 0 and i == 0 else 1, width))
                inplanes = planes * (4 if depth >= 50 else 1)
            setattr(self, f"layer{s + 1}", tnn.Sequential(*layer))
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(inplanes, num_classes)

    def forward(self, x: Any) -> Any:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _Normalizer(tnn.Module):
    """RobustBench's ``ImageNormalizer`` (``normalize_model`` puts it first)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: Any) -> Any:
        return (x - self.mean) / self.std


def _normalize_model(model: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    return tnn.Sequential(OrderedDict([("normalize", _Normalizer(mean, std)), ("model", model)]))


class _TimmAttention(tnn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = tnn.Linear(dim, 3 * dim)
        self.proj = tnn.Linear(dim, dim)

    def forward(self, x: Any) -> Any:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _TimmMlp(tnn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = tnn.Linear(dim, hidden)
        self.act = tnn.GELU()
        self.fc2 = tnn.Linear(hidden, dim)

    def forward(self, x: Any) -> Any:
        return self.fc2(self.act(self.fc1(x)))


class _TimmBlock(tnn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = tnn.LayerNorm(dim, eps=1e-6)
        self.attn = _TimmAttention(dim, heads)
        self.norm2 = tnn.LayerNorm(dim, eps=1e-6)
        self.mlp = _TimmMlp(dim, 4 * dim)

    def forward(self, x: Any) -> Any:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TimmPatchEmbed(tnn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = tnn.Conv2d(3, dim, patch, patch)


class _TimmViT(tnn.Module):
    """timm's ``VisionTransformer`` with its defaults (class token, ``qkv_bias=True``, eps 1e-6)."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, num_classes: int) -> None:
        super().__init__()
        self.patch_embed = _TimmPatchEmbed(patch, dim)
        self.cls_token = tnn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = tnn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = tnn.Sequential(*[_TimmBlock(dim, heads) for _ in range(depth)])
        self.norm = tnn.LayerNorm(dim, eps=1e-6)
        self.head = tnn.Linear(dim, num_classes)

    def forward(self, x: Any) -> Any:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# ---------------------------------------------------------------------------
# Models, each built once.


@pytest.fixture(scope="module")
def preact18() -> Any:
    rb = _robustbench("resnet")
    return _build(rb.PreActResNet18)


@pytest.fixture(scope="module")
def preact18_converted(preact18: Any) -> tuple[Any, Any]:
    return zoo.from_torch("preact-resnet-18", preact18.state_dict())


def test_wide_resnet_28_10_matches_robustbench() -> None:
    # sub_block1=True, as most RobustBench WRN entries: weights the forward pass never uses.
    model = _build(lambda: _robustbench("wide_resnet").WideResNet(depth=28, widen_factor=10, sub_block1=True))
    module, variables = zoo.from_torch("wrn-28-10", model.state_dict())
    assert isinstance(module, zoo.WideResNet) and (module.depth, module.width) == (28, 10)
    assert _gap(model, module, variables, _inputs()) <= TOLERANCE


def test_wide_resnet_34_10_converts() -> None:
    # The same class as WRN-28-10 (checked numerically above): keys and shapes only.
    with torch.device("meta"):
        model = _robustbench("wide_resnet").WideResNet(depth=34, widen_factor=10)
    module, variables = zoo.from_torch("wrn-34-10", _zero_cost(model))
    assert (module.depth, module.width, module.num_classes) == (34, 10, 10)
    assert _n_params(variables) == sum(v.numel() for v in model.parameters())


def test_dm_wide_resnet_matches_robustbench_at_reduced_size() -> None:
    rb = _robustbench("dm_wide_resnet")
    model = _build(
        lambda: rb.DMWideResNet(
            num_classes=10,
            depth=16,
            width=2,
            activation_fn=rb.Swish,
            mean=rb.CIFAR10_MEAN,
            std=rb.CIFAR10_STD,
        )
    )
    module, variables = zoo.from_torch("dm-wrn-16-2", model.state_dict())
    assert isinstance(module, zoo.DMWideResNet)
    assert _gap(model, module, variables, _inputs()) <= TOLERANCE


def test_dm_wide_resnet_cifar100_uses_cifar100_statistics() -> None:
    # RobustBench pairs 100 classes with CIFAR-100's mean/std (SiLU, as some entries use).
    rb = _robustbench("dm_wide_resnet")
    model = _build(
        lambda: rb.DMWideResNet(
            num_classes=100,
            depth=10,
            width=1,
            activation_fn=tnn.SiLU,
            mean=rb.CIFAR100_MEAN,
            std=rb.CIFAR100_STD,
        )
    )
    module, variables = zoo.from_torch("dm-wrn-10-1", model.state_dict())
    assert module.num_classes == 100
    assert _gap(model, module, variables, _inputs()) <= TOLERANCE


def test_dm_wide_resnet_70_16_converts_at_full_size() -> None:
    rb = _robustbench("dm_wide_resnet")
    with torch.device("meta"):
        model = rb.DMWideResNet(num_classes=10, depth=70, width=16, activation_fn=rb.Swish)
    module, variables = zoo.from_torch("dm-wrn-70-16", _zero_cost(model))
    out = jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert out.shape == (2, 10)
    assert _n_params(variables) == sum(v.numel() for v in model.parameters())


def test_preact_resnet_18_matches_robustbench(preact18: Any, preact18_converted: tuple[Any, Any]) -> None:
    module, variables = preact18_converted
    assert not module.bn_before_fc and not module.out_shortcut
    assert _gap(preact18, module, variables, _inputs()) <= TOLERANCE


def test_preact_resnet_18_v2_with_final_batch_norm() -> None:
    # Rice et al.'s entries: PreActBlockV2 (shortcut from the activated input) and bn_before_fc.
    rb = _robustbench("resnet")
    model = _build(
        lambda: rb.PreActResNet(rb.PreActBlockV2, [2, 2, 2, 2], num_classes=100, bn_before_fc=True)
    )
    module, variables = zoo.from_torch("preact-resnet-18", model.state_dict())
    assert module.bn_before_fc and module.out_shortcut and module.num_classes == 100
    assert _gap(model, module, variables, _inputs()) <= TOLERANCE


def test_normalisation_buffers_move_into_the_module(preact18: Any) -> None:
    # Entries such as Wong2020Fast keep the normalisation in mu/sigma buffers.
    mu, sigma = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    state = dict(preact18.state_dict())
    state["mu"] = torch.tensor(mu).view(1, 3, 1, 1)
    state["sigma"] = torch.tensor(sigma).view(1, 3, 1, 1)
    module, variables = zoo.from_torch("preact-resnet-18", state)
    assert module.mean == pytest.approx(mu) and module.std == pytest.approx(sigma)
    wrapped = _normalize_model(preact18, mu, sigma).eval()
    assert _gap(wrapped, module, variables, _inputs()) <= TOLERANCE


def test_dm_preact_resnet_18_matches_robustbench() -> None:
    rb = _robustbench("dm_wide_resnet")
    model = _build(
        lambda: rb.DMPreActResNet(
            num_classes=10,
            depth=18,
            width=0,
            activation_fn=rb.Swish,
            mean=rb.CIFAR10_MEAN,
            std=rb.CIFAR10_STD,
        )
    )
    module, variables = zoo.from_torch("dm-preact-resnet-18", model.state_dict())
    assert _gap(model, module, variables, _inputs()) <= TOLERANCE


def test_cifar_resnet_18_matches_robustbench() -> None:
    model = _build(_robustbench("resnet").ResNet18)
    module, variables = zoo.from_torch("cifar-resnet-18", model.state_dict())
    assert _gap(model, module, variables, _inputs()) <= TOLERANCE


@pytest.mark.parametrize(("arch", "depth"), [("resnet-18", 18), ("resnet-50", 50)])
def test_imagenet_resnet_matches_torchvision_layout(arch: str, depth: int) -> None:
    # As RobustBench ships them: normalize_model(torchvision resnet, ImageNet mean/std).
    model = _build(lambda: _normalize_model(_TVResNet(depth, 1000), zoo.IMAGENET_MEAN, zoo.IMAGENET_STD))
    module, variables = zoo.from_torch(arch, model.state_dict())
    assert isinstance(module, zoo.ResNet) and module.num_classes == 1000
    assert module.mean == pytest.approx(zoo.IMAGENET_MEAN)
    size = 64 if depth == 18 else 32  # 32x32 still reaches every layer (1x1 in the last stage)
    assert _gap(model, module, variables, _inputs(size)) <= TOLERANCE


def test_wide_resnet_50_2_converts() -> None:
    # ResNet-50's computation (checked above) with wider bottlenecks: keys and shapes only.
    with torch.device("meta"):
        model = _TVResNet(50, 1000, width_factor=2)
    module, variables = zoo.from_torch("wide-resnet-50-2", _zero_cost(model))
    assert module.width_factor == 2
    assert _n_params(variables) == sum(v.numel() for v in model.parameters())


def test_vit_matches_timm_layout() -> None:
    model = _build(lambda: _timm_vit_small(image=32, patch=8))
    # A named size with its dimensions overridden: the same class at test size.
    module, variables = zoo.from_torch("vit-s-8", model.state_dict(), dim=64, depth=2, num_heads=4)
    assert isinstance(module, zoo.VisionTransformer) and module.image_size == 32
    assert _gap(model, module, variables, _inputs()) <= TOLERANCE


def _timm_vit_small(image: int, patch: int) -> Any:
    return _TimmViT(image, patch, dim=64, depth=2, heads=4, num_classes=10)


@pytest.mark.parametrize("arch", ["vit-s-16", "vit-b-16"])
def test_named_vit_sizes_have_timm_shapes(arch: str) -> None:
    dims = {"vit-s-16": (384, 12, 6), "vit-b-16": (768, 12, 12)}[arch]  # timm's vit_small/base_patch16_224
    with torch.device("meta"):
        model = _TimmViT(224, 16, *dims, num_classes=1000)
    module, variables = zoo.from_torch(arch, _zero_cost(model))
    assert module.image_size == 224
    out = jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert out.shape == (1, 1000)


# ---------------------------------------------------------------------------
# Rematerialisation: the same function and variables, less memory for a gradient.

# XLA:CPU expands jax.checkpoint's optimisation barriers early and its CSE pass
# then merges the recomputation back into the forward pass, so remat saves no
# memory there unless that expansion is disabled (GPU and TPU keep the barriers).
_CPU_REMAT_OPTIONS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


@pytest.fixture(scope="module")
def wrn10_both() -> tuple[Any, Any, Any, Any]:
    """A RobustBench WRN-10-1 (random weights) converted without and with remat."""
    model = _build(lambda: _robustbench("wide_resnet").WideResNet(depth=10, widen_factor=1))
    plain, remat = (zoo.from_torch("wrn-10-1", model.state_dict(), remat=r) for r in (False, True))
    return model, plain, remat, jnp.asarray(_inputs())


def _input_gradient(logits_fn: Any, x: jax.Array) -> jax.Array:
    return jax.grad(lambda v: jnp.sum(jax.nn.log_softmax(logits_fn(v))[:, 0]))(x)


def test_remat_loads_the_same_variables_and_computes_the_same(wrn10_both: tuple[Any, Any, Any, Any]) -> None:
    model, (plain, variables), (remat, v_remat), x = wrn10_both
    assert remat.remat and not plain.remat
    assert jax.tree.structure(variables) == jax.tree.structure(v_remat)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, v_remat))

    @jax.jit
    def logits_and_gradient(f: Any, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        return f(v), _input_gradient(f, v)

    l_plain, g_plain = logits_and_gradient(jaxadv.from_flax(plain, variables), x)
    l_remat, g_remat = logits_and_gradient(jaxadv.from_flax(remat, variables), x)
    reference = _torch_logits(model, np.asarray(x))
    assert float(np.max(np.abs(l_remat - reference)) / np.max(np.abs(reference))) <= TOLERANCE
    np.testing.assert_allclose(l_remat, l_plain, rtol=0, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_plain))) > 1e-4  # a gradient worth comparing
    np.testing.assert_allclose(g_remat, g_plain, rtol=0, atol=1e-6)


def test_remat_lowers_the_gradient_s_temporary_memory(wrn10_both: tuple[Any, Any, Any, Any]) -> None:
    _, (plain, variables), (remat, _), _ = wrn10_both
    x = jnp.asarray(np.random.default_rng(1).uniform(0.0, 1.0, (16, 32, 32, 3)).astype(np.float32))
    options = _CPU_REMAT_OPTIONS if jax.default_backend() == "cpu" else None
    temp = []
    for module in (plain, remat):
        lowered = jax.jit(_input_gradient).lower(jaxadv.from_flax(module, variables), x)
        analysis = lowered.compile(compiler_options=options).memory_analysis()
        if analysis is None:
            pytest.skip(f"no memory analysis on the {jax.default_backend()} backend")
        temp.append(analysis.temp_size_in_bytes)
    plain_bytes, remat_bytes = temp
    # WRN-10-1 at batch 16: 7.0 MiB of temporaries without remat, 5.0 MiB with it (XLA:CPU);
    # without the option above, XLA:CPU gives 7.0 MiB for both.
    assert remat_bytes < 0.9 * plain_bytes, (plain_bytes, remat_bytes)


def test_pgd_attacks_a_converted_model(preact18_converted: tuple[Any, Any]) -> None:
    module, variables = preact18_converted
    x = jnp.asarray(_inputs())
    logits_fn = jaxadv.from_flax(module, variables)
    y = jnp.argmax(logits_fn(x), axis=-1)
    eps = 8 / 255
    x_adv = jaxadv.pgd(logits_fn, x, y, key=jax.random.key(0), eps=eps, steps=2)
    assert x_adv.shape == x.shape and bool(jnp.all(jnp.isfinite(x_adv)))
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0


# ---------------------------------------------------------------------------
# Checkpoint handling and errors.


def test_dataparallel_prefix_and_pt_file(
    tmp_path: Path, preact18: Any, preact18_converted: tuple[Any, Any]
) -> None:
    path = tmp_path / "model.pt"
    state = {f"module.{k}": v for k, v in preact18.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    _, variables = zoo.from_torch("preact-resnet-18", path)
    _, expected = preact18_converted
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, expected))


def test_numpy_state_dict_needs_no_torch_tensors(preact18: Any, preact18_converted: tuple[Any, Any]) -> None:
    state = {k: v.numpy() for k, v in preact18.state_dict().items()}
    _, variables = zoo.from_torch("preact-resnet-18", state)
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, preact18_converted[1])
    )


def test_mismatched_state_dict_is_refused_with_the_keys(preact18: Any) -> None:
    state = dict(preact18.state_dict())
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["linear.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        zoo.from_torch("preact-resnet-18", state)
    message = str(info.value)
    assert "missing (1): layer1.0.conv1.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "linear.bias (7,) -> expected (10,)" in message


def test_wrong_architecture_names_the_right_one(preact18: Any) -> None:
    with pytest.raises(ValueError, match="preact-resnet"):
        zoo.from_torch("wrn-28-10", preact18.state_dict())
    with pytest.raises(ValueError, match="unknown architecture"):
        zoo.from_torch("wrn28", preact18.state_dict())


def test_importing_the_zoo_does_not_import_torch() -> None:
    code = "import sys, jaxadv, jaxadv.zoo; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
