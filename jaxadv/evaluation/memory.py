"""Batch sizes and device memory: the first size tried, halving after an
out-of-memory error, and the padded sizes that share one compiled program."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def _out_of_memory(e: BaseException) -> bool:
    """XLA's error for a buffer that does not fit (raised at compile or run time)."""
    text = str(e)
    return isinstance(e, jax.errors.JaxRuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
    )


def _check_batch_size(batch_size: Any, max_batch_size: int) -> None:
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    elif batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, (int, np.integer))
        or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")


def _first_size(max_batch_size: int, total: int | None, multiple: int) -> int:
    """The size ``batch_size="auto"`` tries first: ``max_batch_size``, or fewer when the
    data is smaller, a multiple of the rows each process feeds its devices."""
    cap = max(multiple, max_batch_size // multiple * multiple)
    return cap if total is None else min(cap, max(multiple, -(-total // multiple) * multiple))


def _halved(size: int, multiple: int) -> int:
    return max(multiple, size // 2 // multiple * multiple)


# --- where the attacks run -------------------------------------------------------


def _bucket(n: int, batch_size: int) -> int:
    """Smallest power of two >= n (at least 8), capped at batch_size: few compiled shapes."""
    size = 8
    while size < n:
        size *= 2
    return min(size, batch_size)
