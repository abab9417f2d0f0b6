"""What machine a benchmark ran on: CPU model, vector extensions, versions, load.

XLA:CPU and oneDNN pick their kernels by the CPU's vector extensions (AVX2,
AVX-512, AMX...), so the same program can rank differently on two x86 machines;
every benchmark prints them next to its figures (``describe()``).
"""

from __future__ import annotations

import os
import platform

import jax
import jaxlib

# The extensions that decide which convolution and matrix kernels run.
_VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def vector_extensions() -> str:
    """The CPU's vector extensions among those that pick kernels, e.g. ``avx avx2 fma``."""
    flags = set(_cpuinfo().get("flags", "").split())
    if not flags:
        return "unknown (no /proc/cpuinfo)"
    found = [f for f in _VECTOR_FLAGS if f in flags]
    return " ".join(found) + ("" if any(f.startswith("avx512") for f in found) else " (no AVX-512)")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def describe(**extra: str) -> str:
    """A ``machine`` block: CPU, vector extensions, cores, versions, load; ``extra`` lines appended."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    lines = [
        "machine",
        f"  cpu            {cpu_model()}",
        f"  vector ext.    {vector_extensions()}",
        f"  cores          {os.cpu_count()} (affinity {affinity})",
        f"  python         {platform.python_version()} on {platform.system()} {platform.release()}",
        f"  jax / jaxlib   {jax.__version__} / {jaxlib.__version__}, backend {jax.default_backend()}",
        f"  XLA_FLAGS      {os.environ.get('XLA_FLAGS', '(unset)')}",
    ]
    lines += [f"  {k:14s} {v}" for k, v in extra.items()]
    lines.append(f"  load average   {load_average()} (1, 5, 15 min; other processes share the cores)")
    return "\n".join(lines)
