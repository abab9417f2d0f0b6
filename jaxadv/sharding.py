r"""Data parallelism with :mod:`jax.sharding`: one device, several devices, several hosts.

Attacks are per-example computations, so the natural way to scale them is to
split the batch axis over devices and let XLA's partitioner run every step of
an attack on each device's rows. JAX already is the distributed engine; this
module only holds the few helpers that make the batch layout explicit:

* :func:`batch_mesh` builds a 1-D :class:`jax.sharding.Mesh` over all devices
  (of all processes once :func:`jax.distributed.initialize` has run).
* :func:`batch_sharding` splits the leading axis over that mesh;
  :func:`replicated` copies a value to every device of it.
* :func:`shard_batch` pads a batch whose size is not a multiple of the number
  of devices (repeating its first example) and places it, returning a mask of
  the real rows; in a multi-process run each process passes its *own* rows and
  gets back one global array (:func:`jax.make_array_from_process_local_data`).
* :func:`gather` brings a sharded result back to NumPy on every process
  (:func:`jax.experimental.multihost_utils.process_allgather`) and drops the
  padding.
* :func:`cast_model` runs a model in a lower compute precision (bfloat16)
  while the attack keeps its own arithmetic in float32.

An attack called on a batch-sharded ``x`` compiles to one SPMD program: each
device holds its rows of every per-example quantity (iterates, best examples,
success masks, query counts) for the whole attack, and nothing is gathered
inside the loop. The only cross-device traffic is what the attack itself asks
for: scalar reductions such as "have all examples succeeded" for early stopping.
The model's parameters are replicated (XLA copies uncommitted parameters to
every device; :func:`replicated` does it explicitly, and is required when
several processes take part).

Typical use on one host with several accelerators::

    mesh = jaxadv.sharding.batch_mesh()
    batch = jaxadv.sharding.shard_batch((x, y), mesh=mesh)
    xs, ys = batch.data
    x_adv = jaxadv.pgd(logits_fn, xs, ys, key=key, eps=8 / 255, steps=10)
    x_adv = jaxadv.sharding.gather(x_adv, batch.mask)      # NumPy, padding dropped

and :func:`jaxadv.evaluate` does the same for a whole dataset (its
``sharding=`` argument). See ``docs/scaling.md`` for launch commands.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxadv.typing import Array, LogitsFn

__all__ = [
    "ShardedBatch",
    "batch_mesh",
    "batch_sharding",
    "cast_model",
    "gather",
    "local_rows",
    "pad_batch",
    "replicate",
    "replicated",
    "shard_batch",
]

#: Name of the mesh axis the batch is split over.
BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence[Any] | None = None, *, axis: str = BATCH_AXIS) -> Mesh:
    """A 1-D device mesh for data parallelism.

    Args:
      devices: the devices to use, in order; default :func:`jax.devices`, i.e.
        every device of every process (each process's devices form one
        contiguous block of the mesh, as
        :func:`jax.make_array_from_process_local_data` expects).
      axis: the name of the mesh axis.

    Returns:
      ``Mesh(devices, (axis,))``.
    """
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("batch_mesh needs at least one device")
    return Mesh(np.asarray(devs, dtype=object), (axis,))


def _mesh_and_axis(mesh: Mesh | None, axis: str) -> tuple[Mesh, str]:
    mesh = batch_mesh(axis=axis) if mesh is None else mesh
    if axis not in mesh.axis_names:
        raise ValueError(f"axis {axis!r} is not an axis of the mesh (axes {mesh.axis_names})")
    return mesh, axis


def batch_sharding(mesh: Mesh | None = None, *, axis: str = BATCH_AXIS) -> NamedSharding:
    """Split the leading (batch) axis over the mesh axis ``axis``; other axes whole.

    ``mesh=None`` uses :func:`batch_mesh` (all devices). The same sharding fits
    arrays of any rank: ``PartitionSpec(axis)`` names only the leading axis.
    """
    mesh, axis = _mesh_and_axis(mesh, axis)
    return NamedSharding(mesh, PartitionSpec(axis))


def replicated(mesh: Mesh | None = None) -> NamedSharding:
    """A full copy on every device of ``mesh`` (default: all devices).

    Use it for model parameters: ``jax.device_put(params, replicated(mesh))``.
    In a multi-process run every process must hold the same values.
    """
    mesh = batch_mesh() if mesh is None else mesh
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """Copy every array leaf of ``tree`` to every device of ``mesh``, once.

    ``tree`` may be a model from :func:`jaxadv.from_flax` (a pytree callable),
    a parameter tree or a training state; non-array leaves are left alone.
    Arrays that are not placed explicitly are copied to every device at each
    call of a program over the mesh, and arrays committed to one device cannot
    be mixed with a sharded batch: replicating them up front avoids both. With
    several processes, every process must pass the same values.
    """
    sharding = replicated(mesh)

    def put(leaf: Any) -> Any:
        if isinstance(leaf, (jax.Array, np.ndarray)):
            return jax.device_put(leaf, sharding)
        return leaf

    return jax.tree_util.tree_map(put, tree)


def _batch_size(tree: Any) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("the batch holds no arrays")
    if any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError("every array of the batch needs a leading batch axis")
    sizes = {int(np.shape(leaf)[0]) for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"the arrays of a batch must share their leading size, got sizes {sorted(sizes)}")
    return sizes.pop()


def pad_batch(tree: Any, size: int) -> Any:
    """Pad every array of ``tree`` along its leading axis to ``size`` rows.

    The padding repeats the first example, so padded rows are valid inputs
    (inside the bounds, with a valid label) and cost no special casing in an
    attack; drop them afterwards (see :func:`gather`). NumPy in, NumPy out.
    """
    n = _batch_size(tree)
    if size < n:
        raise ValueError(f"cannot pad a batch of {n} down to {size}")
    if n == 0 and size > 0:
        raise ValueError("cannot pad an empty batch")
    idx = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], tree)


class ShardedBatch(NamedTuple):
    """A batch laid out over a mesh by :func:`shard_batch`.

    Attributes:
      data: the input pytree, each array a global :class:`jax.Array` of
        ``padded`` rows split along the batch axis.
      mask: ``[padded]`` bool global array, ``True`` on real rows and ``False``
        on padding, sharded like ``data``.
      num_valid: real rows fed by this process.
    """

    data: Any
    mask: Array
    num_valid: int


def _local_rows(n: int, multiple: int) -> int:
    """Rows per process: a positive multiple of ``multiple``, equal on every process."""
    rows = max(multiple, math.ceil(n / multiple) * multiple)
    if jax.process_count() > 1:
        # Every process must contribute the same number of rows to a global array.
        rows = int(np.max(multihost_utils.process_allgather(np.asarray(rows, np.int64))))
    return rows


def shard_batch(
    tree: Any,
    *,
    mesh: Mesh | None = None,
    axis: str = BATCH_AXIS,
    pad: bool = True,
) -> ShardedBatch:
    """Place a batch on the devices of ``mesh``, split along its leading axis.

    With one process, ``tree`` is the whole batch. With several processes
    (after :func:`jax.distributed.initialize`), ``tree`` is this process's rows;
    the global batch is the concatenation of all processes' rows in process
    order, built with :func:`jax.make_array_from_process_local_data`.

    A batch whose size is not a multiple of the number of devices is padded by
    repeating its first example (``pad=True``), so that each device holds the
    same number of rows; ``mask`` tells the real rows from the padding. With
    ``pad=False`` an uneven batch raises ``ValueError``.

    Args:
      tree: a pytree of arrays (NumPy or JAX) sharing their leading size ``n``
        (e.g. ``(x, y)``).
      mesh: a mesh holding the axis ``axis`` (default: :func:`batch_mesh`).
      axis: the mesh axis the batch is split over.
      pad: pad an uneven batch instead of raising.

    Returns:
      A :class:`ShardedBatch` ``(data, mask, num_valid)``.
    """
    mesh, axis = _mesh_and_axis(mesh, axis)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    n = _batch_size(tree)
    multiple = rows_multiple(sharding)
    rows = _local_rows(n, multiple)
    if rows != n and not pad:
        raise ValueError(
            f"a batch of {n} rows does not split evenly over {multiple} devices; pass pad=True "
            "or use a batch size that is a multiple of the device count"
        )
    tree = pad_batch(jax.tree_util.tree_map(np.asarray, tree), rows)
    data, mask_arr = place_rows((tree, np.arange(rows) < n), sharding)
    return ShardedBatch(data, mask_arr, n)


def gather(tree: Any, mask: Any = None) -> Any:
    """Bring a (possibly sharded, possibly multi-process) pytree back as NumPy arrays.

    Every process receives the whole global value
    (:func:`jax.experimental.multihost_utils.process_allgather`); with one
    process this is ``np.asarray``. When ``mask`` (``[batch]`` bool, e.g.
    :attr:`ShardedBatch.mask`) is given, the rows where it is false are dropped
    from every array whose leading size is the batch size.

    This is a collective in a multi-process run: call it on every process, once,
    at the end of the computation.
    """

    def fetch(a: Any) -> np.ndarray:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    out = jax.tree_util.tree_map(fetch, tree)
    if mask is None:
        return out
    keep = fetch(mask).astype(bool)
    return jax.tree_util.tree_map(lambda a: a[keep] if a.ndim and a.shape[0] == keep.shape[0] else a, out)


def local_rows(tree: Any) -> Any:
    """This process's rows of batch-sharded global arrays, as NumPy, without communication.

    With several processes, a global batch built by :func:`shard_batch` holds
    each process's rows as one block, in process order: process ``i`` of ``P``
    owns rows ``[i * R, (i + 1) * R)`` with ``R = batch / P``. This returns that
    block of every array of ``tree``, copied from the local devices only. With
    one process it is ``np.asarray``.
    """

    def rows(a: Any) -> np.ndarray:
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            a = np.asarray(a)
            if jax.process_count() == 1 or a.ndim == 0:
                return a
            r = a.shape[0] // jax.process_count()
            return a[jax.process_index() * r : (jax.process_index() + 1) * r]
        r = a.shape[0] // jax.process_count()
        start = jax.process_index() * r
        out = np.empty((r,) + a.shape[1:], a.dtype)
        filled = np.zeros(r, bool)
        for shard in a.addressable_shards:
            lo, hi, _ = shard.index[0].indices(a.shape[0]) if shard.index else (0, a.shape[0], 1)
            lo_c, hi_c = max(lo, start), min(hi, start + r)
            if lo_c < hi_c:
                out[lo_c - start : hi_c - start] = np.asarray(shard.data)[lo_c - lo : hi_c - lo]
                filled[lo_c - start : hi_c - start] = True
        if not filled.all():
            raise ValueError("the array's rows are not laid out one block per process (see shard_batch)")
        return out

    return jax.tree_util.tree_map(rows, tree)


def resolve_batch_sharding(spec: Mesh | NamedSharding | bool | None) -> NamedSharding | None:
    """The batch sharding meant by a ``sharding=`` argument, or ``None`` for one device.

    ``None``: all devices when there is more than one, else ``None``. ``True``:
    all devices. ``False``: one device (refused with several processes). A
    :class:`~jax.sharding.Mesh`: split over its ``"batch"`` axis (or its only
    axis). A :class:`~jax.sharding.NamedSharding`: used as given (its
    ``spec[0]`` splits the batch).
    """
    if spec is None:
        return batch_sharding() if jax.device_count() > 1 else None
    if spec is True:
        return batch_sharding()
    if spec is False:
        if jax.process_count() > 1:
            raise ValueError("sharding=False runs on one device; several processes need a batch sharding")
        return None
    if isinstance(spec, NamedSharding):
        if not spec.spec or spec.spec[0] is None:
            raise ValueError(f"the sharding must split the leading (batch) axis, got spec {spec.spec}")
        return spec
    if isinstance(spec, Mesh):
        if BATCH_AXIS in spec.axis_names:
            return batch_sharding(spec)
        if len(spec.axis_names) == 1:
            return batch_sharding(spec, axis=str(spec.axis_names[0]))
        raise ValueError(f"the mesh needs a {BATCH_AXIS!r} axis, got axes {spec.axis_names}")
    raise ValueError(f"sharding must be None, a bool, a Mesh or a NamedSharding, got {type(spec).__name__}")


def rows_multiple(sharding: NamedSharding) -> int:
    """Rows of a batch that each process must feed a multiple of: its share of the batch shards."""
    axes = sharding.spec[0]
    names = axes if isinstance(axes, tuple) else (axes,)
    shards = math.prod(sharding.mesh.shape[a] for a in names)
    return max(1, shards // jax.process_count())


def place_rows(tree: Any, sharding: NamedSharding) -> Any:
    """Place this process's rows (a multiple of :func:`rows_multiple`) as global arrays."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree
    )


@dataclasses.dataclass(frozen=True)
class _CastInput:
    dtype: Any

    def __call__(self, inner: LogitsFn, x: Array) -> Array:
        return inner(x.astype(self.dtype))


def _cast_leaf(dtype: Any) -> Any:
    def cast(leaf: Any) -> Any:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf, dtype)
        return leaf

    return cast


def cast_model(logits_fn: LogitsFn, dtype: Any = jnp.bfloat16) -> LogitsFn:
    """Run a model in a lower compute precision: parameters and inputs cast to ``dtype``.

    ``logits_fn`` must be a pytree callable (e.g. from :func:`jaxadv.from_flax`
    or :func:`jaxadv.from_apply`); its floating-point leaves (parameters,
    normalisation constants) are cast to ``dtype`` once, and each call casts
    ``x`` to ``dtype`` before the model sees it. Flax layers without an
    explicit ``dtype`` then compute in ``dtype``. The attacks are unchanged:
    they keep iterates, projections and losses in float32 (logits are cast up
    before the loss) and differentiate through the cast, so the gradient with
    respect to the float32 input is that of the low-precision model.

    Returns:
      A pytree callable ``x -> logits`` (logits in ``dtype``); its leaves stay
      traced by the attacks.
    """
    inner = jax.tree_util.tree_map(_cast_leaf(dtype), logits_fn)
    return jax.tree_util.Partial(_CastInput(jnp.dtype(dtype)), inner)
