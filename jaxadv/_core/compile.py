"""``jit`` for the library's own programs, with XLA:CPU's convolutions on Eigen (private).

XLA:CPU (jaxlib 0.10) hands every large enough convolution to a YNNPACK fusion.
On a 2-core AMD EPYC with AVX2 and no AVX-512, Eigen's convolution ran the same
convolutions faster: PreAct-ResNet-18's forward pass at batch 32 took 0.57 s
against 1.19 s, its input gradient 1.19-1.29 s against 2.20 s, and both then beat
PyTorch's oneDNN on the same machine (``benchmarks/RESULTS.md``, "Input gradients
on XLA:CPU"). XLA chooses per compilation, from the debug option
``xla_cpu_experimental_ynn_fusion_type``: its default lists dots and
convolutions; :data:`EIGEN_OPTIONS` lists dots only.

:func:`jit` is :func:`jax.jit` with that option added when the program compiles
for XLA:CPU and the setting ``cpu_eigen_convolutions`` of :mod:`jaxadv.config`
is on. It applies to the programs jaxadv compiles itself (a direct call's attack
loop, the model's clean logits, an attack's initial state); under a caller's own
``jit`` the caller's compilation decides (set ``XLA_FLAGS`` to
``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``
for the same effect there). Results equal YNNPACK's up to floating-point
reassociation. If a jaxlib does not know the option, the first compilation that
asks for it fails with a message naming it; :func:`jit` then logs a warning
once and compiles without it from then on.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, TypeVar

import jax

from jaxadv import config
from jaxadv.validation import is_traced

logger = logging.getLogger("jaxadv")

F = TypeVar("F", bound=Callable[..., Any])

#: The debug option, and the value that keeps dots and leaves convolutions to Eigen.
OPTION = "xla_cpu_experimental_ynn_fusion_type"
EIGEN_OPTIONS: dict[str, Any] = {OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

_lock = threading.Lock()
_unsupported: list[str] = []  # the first error, once the option was refused


def eigen_convolutions() -> bool:
    """Whether programs compiled now get :data:`EIGEN_OPTIONS` (setting on, CPU backend, option known)."""
    return not _unsupported and config.read("cpu_eigen_convolutions") and jax.default_backend() == "cpu"


def _refused(error: Exception) -> bool:
    return OPTION in str(error)


def _give_up(error: Exception) -> None:
    with _lock:
        if not _unsupported:
            _unsupported.append(str(error))
            logger.warning(
                "jaxadv: this jaxlib does not take the compile option %s; convolutions stay on "
                "XLA's default path (%s)",
                OPTION,
                str(error).splitlines()[0],
            )


def jit(fun: F | None = None, **jit_kwargs: Any) -> Any:
    """:func:`jax.jit`, compiling with :data:`EIGEN_OPTIONS` while :func:`eigen_convolutions` holds.

    Usable as ``@jit`` or ``@functools.partial(jit, static_argnames=...)``. The
    two programs (with and without the option) are cached separately, so turning
    the setting on or off never reuses the other's compilation.
    """
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    plain = jax.jit(fun, **jit_kwargs)
    eigen = jax.jit(fun, compiler_options=EIGEN_OPTIONS, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        # Compile options belong to a top-level program only: inside a caller's trace
        # this program is inlined into the caller's, which is compiled as the caller says.
        if eigen_convolutions() and not is_traced(args, kwargs):
            try:
                return eigen(*args, **kwargs)
            except jax.errors.JaxRuntimeError as e:
                if not _refused(e):
                    raise
                _give_up(e)
            except ValueError as e:
                if "top-level" not in str(e):
                    raise
        return plain(*args, **kwargs)

    call.eigen, call.plain = eigen, plain  # type: ignore[attr-defined]  # the two programs, for inspection
    return call
