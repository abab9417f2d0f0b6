"""The Vision Transformer (Dosovitskiy et al., 2021) in timm's ``vit_*`` layout.

RobustBench's ImageNet ViT entries are timm models (``vit_base_patch16_224``
wrapped in a normaliser). :class:`VisionTransformer` reproduces timm's
``VisionTransformer`` with its defaults: a class token, learned position
embeddings, pre-norm blocks (layer norm with eps ``1e-6``, multi-head
self-attention with a fused ``qkv`` projection, an MLP with exact GELU), a
final layer norm and a linear head on the class token. Its variables are named
after timm's state dict keys (``patch_embed.proj``, ``blocks.0.attn.qkv``,
``head``...).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxadv.typing import Array
from jaxadv.zoo.layers import block_class, layer_norm, normalise

#: ``(dim, depth, num_heads)`` of timm's named sizes.
SIZES: dict[str, tuple[int, int, int]] = {
    "ti": (192, 12, 3),
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
}


class _Attention(nn.Module):
    dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, tokens, _ = x.shape
        head_dim = self.dim // self.num_heads
        # timm's fused projection is ordered [q | k | v], each [heads, head_dim].
        qkv = nn.Dense(3 * self.dim, name="qkv")(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [batch, tokens, heads, head_dim]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        return nn.Dense(self.dim, name="proj")(out.reshape(batch, tokens, self.dim))


class _Block(nn.Module):
    dim: int
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x + _Attention(self.dim, self.num_heads, name="attn")(layer_norm("norm1")(x))
        y = nn.Dense(self.mlp_dim, name="mlp.fc1")(layer_norm("norm2")(x))
        return x + nn.Dense(self.dim, name="mlp.fc2")(nn.gelu(y, approximate=False))


class VisionTransformer(nn.Module):
    """timm's ``VisionTransformer`` (class-token pooling), e.g. ``vit_base_patch16_224``.

    Attributes:
      num_classes: logits returned.
      image_size: input height and width (the position embeddings are learned
        for ``(image_size / patch_size) ** 2`` patches plus the class token).
      patch_size: side of the square patches.
      dim: embedding width (divisible by ``num_heads``).
      depth: number of transformer blocks.
      num_heads: attention heads. ``SIZES`` in :mod:`jaxadv.zoo.vit` lists
        timm's ``(dim, depth, num_heads)`` per size.
      mlp_ratio: the MLP's hidden width over ``dim``.
      mean: per-channel mean subtracted first; ``None`` skips it.
      std: per-channel std divided by next; ``None`` skips it.
      remat: recompute each transformer block's activations in the backward
        pass (:func:`flax.linen.remat`) instead of storing them: less memory
        for gradients, one more forward pass of compute. Same variables.
    """

    num_classes: int = 1000
    image_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, image_size, image_size, 3] -> [batch, num_classes]``."""
        if self.image_size % self.patch_size or self.dim % self.num_heads:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size}) "
                f"and dim ({self.dim}) of num_heads ({self.num_heads})"
            )
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} inputs, got {x.shape[1:3]}")
        p = self.patch_size
        x = normalise(x, self.mean, self.std)
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed.proj")(x)
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.dim)  # patches in row-major order, as timm flattens them
        tokens = x.shape[1] + 1
        init = nn.initializers.normal(0.02)
        cls = self.param("cls_token", init, (1, 1, self.dim), jnp.float32)
        pos = self.param("pos_embed", init, (1, tokens, self.dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.dim)).astype(x.dtype), x], axis=1) + pos
        mlp_dim = int(self.dim * self.mlp_ratio)
        block = block_class(_Block, self.remat)
        for i in range(self.depth):
            x = block(self.dim, self.num_heads, mlp_dim, name=f"blocks.{i}")(x)
        x = layer_norm("norm")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])
