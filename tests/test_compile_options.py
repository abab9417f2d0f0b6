"""The library's own programs on XLA:CPU: convolutions on Eigen (``jaxadv._core.compile``).

The option changes where XLA runs a convolution, never what it computes: results
equal XLA's default program's up to float reassociation, the compiled program holds
no YNNPACK convolution, a caller's ``jit`` still traces through, the setting turns it
off, and a jaxlib that refuses the option gets the default program and one warning.
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv import config
from jaxadv._core import compile as cc

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Large enough that XLA's default hands the convolution to a YNNPACK fusion.
X = jax.random.uniform(jax.random.key(0), (4, 16, 16, 32))
W = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.1


def _option_known() -> bool:
    try:
        jax.jit(lambda v: v + 1, compiler_options=cc.EIGEN_OPTIONS).lower(1.0).compile()
    except jax.errors.JaxRuntimeError as e:
        if cc.OPTION in str(e):
            return False
        raise
    return True


needs_option = pytest.mark.skipif(not _option_known(), reason=f"this jaxlib does not take {cc.OPTION}")


def _ynn_convolutions(text: str) -> int:
    """YNNPACK fusions that hold a convolution, in an optimised HLO text."""
    fused = set(re.findall(r"(\S+) = \S+ fusion\([^\n]*kind=kCustom, calls=(\S+)[^\n]*__ynn_fusion", text))
    bodies = {callee.strip(",") for _, callee in fused}
    count = 0
    for body in bodies:
        m = re.search(rf"\n{re.escape(body)} [^\n]*\{{\n(.*?)\n\}}", text, re.S)
        count += bool(m and " convolution(" in m.group(1))
    return count


@needs_option
def test_programs_put_convolutions_on_eigen_and_compute_the_same() -> None:
    conv = cc.jit(_conv)
    default = jax.jit(_conv).lower(X, W).compile().as_text()
    ours = conv.eigen.lower(X, W).compile().as_text()
    assert _ynn_convolutions(ours) == 0 and " convolution(" in ours
    np.testing.assert_allclose(np.asarray(conv(X, W)), np.asarray(jax.jit(_conv)(X, W)), rtol=1e-5, atol=1e-5)
    if _ynn_convolutions(default) == 0:  # XLA's choice may depend on the CPU
        pytest.skip("XLA's default program puts no convolution on YNNPACK on this CPU")


def test_inside_a_callers_trace_the_callers_compilation_decides() -> None:
    conv = cc.jit(_conv)
    want = np.asarray(jax.jit(_conv)(X, W))
    # Traced arguments, and concrete ones closed over by the caller's trace.
    np.testing.assert_allclose(np.asarray(jax.jit(conv)(X, W)), want, rtol=1e-5, atol=1e-5)
    closed = jax.jit(lambda u: conv(X, W) + 0 * u)(1.0)
    np.testing.assert_allclose(np.asarray(closed), want, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda x: jnp.sum(conv(x, W) ** 2))(X)
    g_ref = jax.grad(lambda x: jnp.sum(_conv(x, W) ** 2))(X)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-4)
    assert jax.vmap(conv, in_axes=(0, None))(X[:, None], W).shape == (4, 1, 16, 16, 32)


@needs_option
def test_the_setting_turns_it_off() -> None:
    assert cc.eigen_convolutions()
    with config.override(cpu_eigen_convolutions=False):
        assert not cc.eigen_convolutions()
    with pytest.raises(ValueError, match="takes True or False"):
        config.update("cpu_eigen_convolutions", 1)  # type: ignore[arg-type]
    assert cc.eigen_convolutions()
    # Through an attack: the same adversarial examples with the setting on and off.
    f = jaxadv.from_apply(lambda p, x: jnp.mean(_conv(x, p), axis=(1, 2))[:, :10], W)
    y = jaxadv.predict(f, X)
    on = jaxadv.pgd(f, X, y, key=jax.random.key(0), eps=0.05, step_size=0.01, steps=3)
    with config.override(cpu_eigen_convolutions=False):
        off = jaxadv.pgd(f, X, y, key=jax.random.key(0), eps=0.05, step_size=0.01, steps=3)
    np.testing.assert_allclose(np.asarray(on), np.asarray(off), atol=1e-6)


def test_rows_round_alike_on_any_row_count_with_the_setting_off() -> None:
    """With the setting off, a row of the digits CNN gets the same bits with 8 or 60
    rows as with 64 (what the 8-device sharding test relies on); with it on, Eigen
    picks its blocking from the whole convolution's shape, so rows may round
    differently, but only by float32 rounding."""
    import small_models

    from jaxadv import examples

    fn = small_models.trained_digits("cnn").logits_fn
    x = jnp.asarray(examples.load_digits(0)[1].x[:64])

    def run(rows: int) -> tuple[np.ndarray, np.ndarray]:
        logits = cc.jit(fn)(x[:rows])
        grad = cc.jit(jax.grad(lambda v: jnp.sum(fn(v)[:, 0])))(x[:rows])
        return np.asarray(logits), np.asarray(grad)

    for setting in (False, True):
        with config.override(cpu_eigen_convolutions=setting):
            full = run(64)
            for rows in (8, 60):
                for got, want in zip(run(rows), full, strict=True):
                    if setting:
                        np.testing.assert_allclose(got, want[:rows], rtol=1e-5, atol=1e-5)
                    else:
                        np.testing.assert_array_equal(got, want[:rows], err_msg=f"{rows} rows")


def test_a_refused_option_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cc, "EIGEN_OPTIONS", {cc.OPTION: "LIBRARY_FUSION_TYPE_NO_SUCH_VALUE"})
    monkeypatch.setattr(cc, "_unsupported", [])
    conv = cc.jit(_conv)
    with caplog.at_level(logging.WARNING, logger="jaxadv"):
        first = conv(X, W)
        second = conv(X + 1.0, W)
    np.testing.assert_allclose(np.asarray(first), np.asarray(jax.jit(_conv)(X, W)), rtol=1e-6, atol=1e-6)
    assert second.shape == first.shape
    warnings = [r for r in caplog.records if cc.OPTION in r.getMessage()]
    assert len(warnings) == 1
    assert not cc.eigen_convolutions()


def test_other_compile_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cc, "EIGEN_OPTIONS", {"xla_cpu_no_such_option": "1"})
    monkeypatch.setattr(cc, "_unsupported", [])
    conv = cc.jit(_conv)
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_no_such_option"):
        conv(X, W)
