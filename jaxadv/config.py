"""Library-wide settings.

Two settings exist today:

``conv_rewrite`` (bool, default ``True``)
    On XLA:CPU, the iterative attacks run their loop body with its
    convolutions written in the form XLA:CPU's fast convolution path takes
    (NHWC input, HWIO kernel, no input dilation), the kernels of the input
    gradient prepared once before the loop instead of in every step
    (:mod:`jaxadv._core.conv_rewrite` explains how). The results are those of
    the plain loop up to floating-point reassociation; only the speed changes.
    On GPU and TPU the rewrite never runs. Measured on a 2-core AMD EPYC (AVX2),
    batch 32 of 32x32x3 images (``benchmarks/RESULTS.md``, "Input gradients on
    XLA:CPU"): PGD-10 on PreAct-ResNet-18 takes 0.7-0.8x its time without the
    rewrite, WRN-28-10 0.6-0.7x; inside a ``fori_loop`` on a model written in
    NCHW, or with convolution gradients in nested loops, the plain loop runs
    naive loop nests and is 2-4x slower. Turn it off to rule it out when
    debugging, or if a model's jaxpr holds a primitive it cannot re-bind (it
    then falls back by itself and logs a warning once).

``cpu_eigen_convolutions`` (bool, default ``True``)
    On XLA:CPU, the programs jaxadv compiles itself (a direct call's attack
    loop, the model's clean logits, an attack's initial state) run their
    convolutions on Eigen's convolution instead of XLA's default YNNPACK
    fusion (:mod:`jaxadv._core.compile`). Measured on the same 2-core AMD EPYC
    (AVX2), PreAct-ResNet-18, batch 32: the forward pass took 0.57 s against
    1.19 s, the input gradient 1.19-1.29 s against 2.20 s, which puts both
    below PyTorch's time on that machine (``benchmarks/RESULTS.md``, "Input
    gradients on XLA:CPU"). Results are YNNPACK's up to floating-point
    reassociation. Under your own ``jax.jit`` your compilation decides: the
    same effect there comes from the environment variable ``XLA_FLAGS`` set to
    ``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``.
    Turn it off where YNNPACK is the faster (measure with
    ``benchmarks/bench_scale.py``: the CPUs measured here had no AVX-512), or
    where results must be bit-identical across batch sizes and device counts:
    Eigen blocks a convolution by its whole shape, so a row can round
    differently with another number of rows (the digits CNN's logits by
    1.9e-6 at 8 rows against 128), where XLA's default gave the same bits.

Settings are read when a program is traced: a program already compiled (by a
direct call's cache or your own ``jax.jit``) keeps the value it was traced
with; the library's own caches key on it. Change a setting with
:func:`update`, read it with :func:`read`, or set it for a block with
:func:`override`::

    import jaxadv
    jaxadv.config.update("conv_rewrite", False)
    with jaxadv.config.override(conv_rewrite=True):
        x_adv = jaxadv.pgd(logits_fn, x, y, key=key, eps=8 / 255, steps=10)

The environment variables ``JAXADV_CONV_REWRITE`` and
``JAXADV_CPU_EIGEN_CONVOLUTIONS`` (``0``/``false``/``off`` or ``1``/``true``/``on``)
set the initial values when jaxadv is imported.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_DEFAULTS: dict[str, bool] = {"conv_rewrite": True, "cpu_eigen_convolutions": True}
_ENVIRONMENT = {
    "conv_rewrite": "JAXADV_CONV_REWRITE",
    "cpu_eigen_convolutions": "JAXADV_CPU_EIGEN_CONVOLUTIONS",
}
_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def _from_environment(name: str) -> bool:
    variable = _ENVIRONMENT[name]
    raw = os.environ.get(variable)
    if raw is None or raw.strip() == "":
        return _DEFAULTS[name]
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {variable}={raw!r}: expected one of {_TRUE + _FALSE}")


_values: dict[str, bool] = {name: _from_environment(name) for name in _DEFAULTS}


def _check_name(name: str) -> None:
    if name not in _values:
        raise ValueError(f"name: unknown setting {name!r}; the settings are {sorted(_values)}")


def read(name: str) -> bool:
    """The current value of setting ``name`` (see the module docstring)."""
    _check_name(name)
    return _values[name]


def update(name: str, value: bool) -> None:
    """Set ``name`` to ``value`` for programs traced from now on.

    Raises:
      ValueError: ``name`` is not a setting, or ``value`` is not a ``bool``.
    """
    _check_name(name)
    if not isinstance(value, bool):
        raise ValueError(f"value: setting {name!r} takes True or False, got {value!r}")
    _values[name] = value


@contextlib.contextmanager
def override(**settings: bool) -> Iterator[None]:
    """Within the ``with`` block, the given settings take the given values; restored after."""
    saved = dict(_values)
    try:
        for name, value in settings.items():
            update(name, value)
        yield
    finally:
        _values.clear()
        _values.update(saved)
