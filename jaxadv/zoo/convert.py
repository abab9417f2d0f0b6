"""PyTorch checkpoints -> Flax variables.

The zoo's modules name every layer after the PyTorch module it mirrors, so a
Flax variable's path joined with ``.`` is the prefix of its state dict key.
Per leaf:

==========================================  ===================================  =======================
Flax variable                               PyTorch key                          transform
==========================================  ===================================  =======================
``params/<path>/kernel`` (4-D, ``HWIO``)    ``<path>.weight`` (``OIHW``)          ``transpose(2, 3, 1, 0)``
``params/<path>/kernel`` (2-D, ``[in, out]``) ``<path>.weight`` (``[out, in]``)   ``transpose``
``params/<path>/scale`` (batch/layer norm)  ``<path>.weight``                    none
``params/<path>/bias``                      ``<path>.bias``                      none
``batch_stats/<path>/mean``, ``var``        ``<path>.running_mean``, ``running_var`` none
``params/<path>/<name>`` (other)            ``<path>.<name>``                    none
==========================================  ===================================  =======================

``num_batches_tracked`` counters are dropped. PyTorch is imported only to read
a ``.pt``/``.pth`` file or to turn tensors into arrays; a state dict of NumPy
arrays needs no PyTorch at all.
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxadv.zoo.registry import Spec, build, spec
from jaxadv.zoo.resnet import PreActResNet
from jaxadv.zoo.wide_resnet import WideResNet

StateDict = Mapping[str, Any]

_LIST_LIMIT = 12  # keys shown per kind of problem in an error message

# Keys that only one family's state dicts have, to name the right architecture
# when the requested one does not fit. Checked in order.
_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("init_conv.weight", "dm-wrn-{depth}-{width}"),
    ("block1.layer.0.conv1.weight", "wrn-{depth}-{width}"),
    ("conv_2d.weight", "dm-preact-resnet-{depth}"),
    ("patch_embed.proj.weight", "vit-{size}-{patch}"),
    ("fc.weight", "resnet-{depth} or wide-resnet-{depth}-2"),
    ("bn1.weight", "cifar-resnet-{depth}"),
    ("linear.weight", "preact-resnet-{depth}"),
)


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _conv_kernel(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _dense_kernel(a: np.ndarray) -> np.ndarray:
    return a.T  # [out, in] -> [in, out]


def _torch_key(flax_path: tuple[str, ...], ndim: int) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    collection, *path, leaf = flax_path
    prefix = ".".join(path)
    if collection == "batch_stats" and leaf in ("mean", "var"):
        return f"{prefix}.running_{leaf}", _identity
    if collection != "params":
        raise ValueError(f"cannot fill the {collection!r} collection from a PyTorch state dict")
    if leaf == "kernel":
        return f"{prefix}.weight", _conv_kernel if ndim == 4 else _dense_kernel
    if leaf == "scale":
        return f"{prefix}.weight", _identity
    return ".".join([*path, leaf]), _identity


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; bfloat16 has no NumPy twin
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _torch_load(torch: Any, path: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with a file that
    cannot be read that way reported as a ``ValueError`` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError) as e:
        # Not chained: PyTorch's message advises weights_only=False, which runs the
        # file's code; a checkpoint of unknown origin must never be opened that way.
        raise ValueError(
            f"cannot read {path} as a PyTorch checkpoint of tensors ({type(e).__name__} from "
            "torch.load with weights_only=True): the file is damaged, truncated or not a .pt/.pth "
            "file, or it holds Python objects besides tensors. Build the model in PyTorch and pass "
            "its state_dict() instead"
        ) from None


def _load(source: StateDict | str | os.PathLike[str]) -> dict[str, Any]:
    loaded: Any = source
    if isinstance(source, (str, os.PathLike)):
        try:
            import torch
        except ImportError as e:
            raise ImportError("reading a .pt/.pth checkpoint needs PyTorch: pip install torch") from e
        loaded = _torch_load(torch, os.fspath(source))
    if hasattr(loaded, "state_dict") and callable(loaded.state_dict):  # a torch.nn.Module
        loaded = loaded.state_dict()
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"expected a state dict (a mapping of names to tensors), got {type(loaded).__name__}"
        )
    for wrapper in ("state_dict", "model_state_dict"):
        # Training checkpoints nest the weights: {"state_dict": {...}, "epoch": ...}.
        if isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    return dict(loaded)


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _normaliser(
    state: dict[str, Any],
) -> tuple[dict[str, Any], tuple[float, ...] | None, tuple[float, ...] | None]:
    """Split off normalisation buffers: RobustBench's ``normalize_model`` wrapper
    (``normalize.mean``, ``normalize.std``, the network under ``model.``) or
    ``mu``/``sigma`` buffers of the network itself."""
    if "normalize.mean" in state and "normalize.std" in state:
        mean, std = state.pop("normalize.mean"), state.pop("normalize.std")
        state = _strip(state, "model.")
    elif "mu" in state and "sigma" in state:
        mean, std = state.pop("mu"), state.pop("sigma")
    else:
        return state, None, None
    as_tuple = lambda a: tuple(float(v) for v in _as_numpy(a).reshape(-1))  # noqa: E731
    return state, as_tuple(mean), as_tuple(std)


def _listed(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
    return f"\n  {kind} ({len(keys)}): {shown}{more}"


def _guess(keys: set[str]) -> str | None:
    for key, family in _SIGNATURES:
        if key in keys:
            return family
    return None


def load_state_dict(
    module: nn.Module,
    state_dict: StateDict,
    *,
    input_shape: tuple[int, ...] = (1, 32, 32, 3),
    ignore: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fill a module's variables from a PyTorch state dict whose keys follow the module's layer names.

    The module is traced once on ``zeros(input_shape)`` (:func:`jax.eval_shape`:
    no computation) to list its variables; each is read from its PyTorch key
    (table in :mod:`jaxadv.zoo.convert`) and transposed to Flax's layout.

    Args:
      module: a linen module whose layers are named after PyTorch's (the zoo's are).
      state_dict: names -> ``torch.Tensor`` or array (no ``module.`` prefix here;
        :func:`from_torch` strips it).
      input_shape: an NHWC input shape the module accepts.
      ignore: key prefixes to drop (weights the PyTorch model holds but never uses).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (float32 unless the module asks
      for another dtype), ready for ``module.apply`` and :func:`jaxadv.from_flax`.

    Raises:
      ValueError: when keys are missing or unexpected, or shapes differ; the
        message lists them (and the architecture the keys look like).
    """
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32)))
    targets = traverse_util.flatten_dict(nn.unbox(abstract))
    state = {k: v for k, v in state_dict.items() if not k.startswith(ignore)}

    plan: dict[str, tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]]] = {}
    for path, target in targets.items():
        key, transform = _torch_key(path, len(target.shape))
        plan[key] = (path, transform)
    norm_layers = {k.rsplit(".", 1)[0] for k in plan if k.endswith(".running_mean")}
    counters = {f"{layer}.num_batches_tracked" for layer in norm_layers}

    missing = sorted(set(plan) - set(state))
    unexpected = sorted(set(state) - set(plan) - counters)
    mismatched: list[str] = []
    flat: dict[tuple[str, ...], Any] = {}
    for key, (path, transform) in plan.items():
        if key not in state:
            continue
        value = transform(_as_numpy(state[key]))
        target = targets[path]
        if value.shape != target.shape:
            mismatched.append(f"{key} {tuple(value.shape)} -> expected {tuple(target.shape)}")
            continue
        flat[path] = jnp.asarray(value, target.dtype)

    if missing or unexpected or mismatched:
        message = f"the state dict does not fit {type(module).__name__}"
        if missing:
            message += _listed("missing", missing)
        if unexpected:
            message += _listed("unexpected", unexpected)
        if mismatched:
            message += _listed("shape mismatch (after conversion to Flax layout)", mismatched)
        if (family := _guess(set(state))) is not None:
            message += f"\n  its keys look like a {family!r} checkpoint"
        raise ValueError(message)
    return traverse_util.unflatten_dict(flat)


def _infer(s: Spec, state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Attributes the checkpoint determines, unless the caller set them."""
    inferred: dict[str, Any] = {}
    if s.cls is PreActResNet:
        inferred["bn_before_fc"] = "bn.weight" in state
        # RobustBench's PreActResNets with a final batch norm all take the
        # shortcut from the activated input (PreActBlockV2 or out_shortcut=True).
        inferred["out_shortcut"] = config.get("bn_before_fc", inferred["bn_before_fc"])
    if s.cls is WideResNet:
        inferred["bias_last"] = "fc.bias" in state
    if "pos_embed" in state and "patch_size" in s.config:
        patches = _as_numpy(state["pos_embed"]).shape[1] - 1
        side = math.isqrt(patches)
        if side * side == patches:
            inferred["image_size"] = side * s.config["patch_size"]
    return {**inferred, **config}


def from_torch(
    arch: str,
    state_dict: StateDict | str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    remat: bool = False,
    **config: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Convert a PyTorch checkpoint of a RobustBench architecture to a Flax module and its variables.

    ``module, variables = from_torch("dm-wrn-70-16", model.state_dict())``, then
    ``jaxadv.from_flax(module, variables)`` is a ``logits_fn`` for every attack.
    Inputs stay in ``[0, 1]``: normalisation that the PyTorch model applies
    (DeepMind models' built-in mean/std, a RobustBench ``normalize_model``
    wrapper, ``mu``/``sigma`` buffers) happens inside the Flax module too.

    What the checkpoint decides (unless passed in ``config``): ``num_classes``
    (the classifier's rows); the mean and std of a normalisation wrapper; a
    PreActResNet's ``bn_before_fc`` (a ``bn`` layer present; ``out_shortcut``
    then defaults to the same value, as in RobustBench's entries); a
    WideResNet's ``bias_last``; a ViT's ``image_size`` (from ``pos_embed``).
    The classic WideResNet's unused ``sub_block1`` weights are dropped.

    Args:
      arch: an architecture name (:data:`~jaxadv.zoo.ARCHITECTURES`, patterns
        in :mod:`jaxadv.zoo.registry`).
      state_dict: a ``state_dict()`` (tensors or arrays), a ``torch.nn.Module``,
        or the path of a ``.pt``/``.pth`` file (read with ``torch.load(...,
        map_location="cpu", weights_only=True)``; a ``{"state_dict": ...}``
        training checkpoint is unwrapped). A ``module.`` prefix
        (``DataParallel``) is stripped.
      num_classes: override the number of classes read from the checkpoint.
      remat: rematerialise each block in the backward pass (see
        :func:`~jaxadv.zoo.build`); the variables are the same either way.
      **config: other module attributes (see :func:`~jaxadv.zoo.build`).

    Returns:
      ``(module, variables)``: the linen module (batch norm in inference mode)
      and ``{"params": ..., "batch_stats": ...}`` as float32 JAX arrays.

    Raises:
      ValueError: for an unknown ``arch`` (or one that is not a name), a file that
        ``torch.load(..., weights_only=True)`` cannot read (named), or a state
        dict that does not fit the architecture (missing or unexpected keys,
        shape mismatches; all listed).
      FileNotFoundError: for a path with no file.
      ImportError: for a file path without PyTorch installed.
    """
    s = spec(arch)
    state = _strip(_load(state_dict), "module.")
    state, mean, std = _normaliser(state)
    if mean is not None:
        config = {"mean": mean, "std": std, **config}
    config = _infer(s, state, config)
    head = f"{s.head}.weight"
    if num_classes is None and head in state:
        num_classes = int(_as_numpy(state[head]).shape[0])
    module = build(arch, num_classes=num_classes, remat=remat, **config)
    size = int(config.get("image_size", s.image_size))
    ignore = ("sub_block1.",) if s.cls is WideResNet else ()
    variables = load_state_dict(module, state, input_shape=(1, size, size, 3), ignore=ignore)
    return module, variables
