"""Where an evaluation runs: one device, a batch sharded over several devices, or
several processes that gather their results once, at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxadv import sharding as shd
from jaxadv.evaluation.memory import _bucket, _out_of_memory
from jaxadv.models import logits as model_logits
from jaxadv.typing import LogitsFn


class _Layout:
    """Where the attacks of one evaluation run: one device, or a batch sharding."""

    def __init__(self, sharding: NamedSharding | None) -> None:
        self.sharding = sharding
        self.multiple = 1 if sharding is None else shd.rows_multiple(sharding)
        self.processes = jax.process_count() if sharding is not None else 1

    def size(self, n: int, batch_size: int) -> int:
        """Rows to feed for ``n`` needed ones: bucketed, a multiple of the device
        share, and the same on every process."""
        size = _bucket(n, batch_size) if n < batch_size else n
        size = -(-size // self.multiple) * self.multiple
        return self.agree(size)

    def agree(self, value: int) -> int:
        """The largest ``value`` over all processes (a collective with several)."""
        if self.processes == 1:
            return value
        return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))

    def place(self, *arrays: np.ndarray) -> Any:
        if self.sharding is None:
            return arrays
        return shd.place_rows(arrays, self.sharding)

    def place_keys(self, keys: jax.Array) -> jax.Array:
        """``[rows]`` keys split over the devices like the rows they belong to."""
        if self.sharding is None:
            return keys
        rows = NamedSharding(self.sharding.mesh, PartitionSpec(self.sharding.spec[0]))
        if self.processes == 1:
            return jax.device_put(keys, rows)
        # A global array is built from NumPy data: the keys travel as their raw data.
        data = shd.place_rows(np.asarray(jax.random.key_data(keys)), rows)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(keys))

    def placer(self) -> Callable[[np.ndarray, int], Any] | None:
        """What the read-ahead thread uses to put a batch's padded inputs on the
        devices; ``None`` with several processes (padding them needs a collective)."""
        if self.processes > 1:
            return None
        sharding = self.sharding
        device = jax.config.jax_default_device  # type: ignore[attr-defined]  # the caller's, thread-local

        def place(xb: np.ndarray, batch_size: int) -> Any:
            padded = shd.pad_batch(xb, self.size(len(xb), batch_size))
            try:
                if sharding is not None:
                    return jax.device_put(padded, sharding)
                with jax.default_device(device):
                    return jax.device_put(padded)
            except jax.errors.JaxRuntimeError as e:
                if _out_of_memory(e):  # the attacks have the memory now: placed later, in turn
                    return None
                raise

        return place

    def fetch(self, out: Any) -> np.ndarray:
        """This process's rows of a result (no communication between processes)."""
        if self.sharding is None:
            return np.asarray(out)
        return np.asarray(shd.local_rows(out))

    def logits(self, logits_fn: LogitsFn, x: Any) -> np.ndarray:
        """Float32 logits of this process's rows of ``x`` (NumPy rows, or placed arrays)."""
        if isinstance(x, np.ndarray):
            (x,) = self.place(x)
        return self.fetch(model_logits(logits_fn, x)).astype(np.float32)

    def gather(self, a: np.ndarray) -> np.ndarray:
        """Every process's ``a``, concatenated in process order (once, at the end)."""
        if self.processes == 1:
            return a
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))


# --- one batch ---------------------------------------------------------------------
