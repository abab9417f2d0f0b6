"""The iterative engine's convolution rewrite (jaxadv._core.conv_rewrite, XLA:CPU).

Inside a ``fori_loop`` body the convolutions are replayed in canonical
NHWC/HWIO form: results must be identical to the plain loop, under ``jit``,
``vmap``, ``grad`` and ``checked``, for other layouts, grouped and 1-D
convolutions, and the rewrite must really be in the compiled program.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxadv
from jaxadv import config, examples
from jaxadv._core import conv_rewrite
from jaxadv.attacks.iterative import projected_gradient
from jaxadv.compose import loop as composed
from jaxadv.keys import row_keys


@pytest.fixture(scope="module")
def data():
    _, test = examples.load_digits(0)
    return jnp.asarray(test.x[:32]), jnp.asarray(test.y[:32])


@pytest.fixture(scope="module")
def cnn(data):
    m = examples.DigitsCNN()
    return jaxadv.from_flax(m, m.init(jax.random.key(0), data[0][:1]))


def plain_fori(f, x, y, steps, key=None):
    """The same attack with the unmodified body (reference)."""
    p = jaxadv.attacks.base.prepare(f, x, y, bounds=(0.0, 1.0), eps=0.1)
    operands = composed.Operands(
        p.params,
        p.x,
        p.labels,
        p.lo,
        p.hi,
        p.eps,
        jnp.float32(0.25 * 0.1),
        row_keys(jax.random.key(0), p.x.shape[0]),
        projected_gradient(),
    )
    static = composed.Static(p.model, False, p.dtype)
    state = composed.LoopState(p.x, (), None)
    return lax.fori_loop(0, steps, lambda i, s: composed.attack_step(i, s, operands, static), state).x


@pytest.mark.slow
def test_jit_identical_and_canonical(cnn, data):
    x, y = data
    ours = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.1, step_size=0.025, steps=5))
    ref = jax.jit(functools.partial(plain_fori, steps=5))
    np.testing.assert_array_equal(np.asarray(ours(cnn, x, y)), np.asarray(ref(cnn, x, y)))
    host = jaxadv.bim(cnn, x, y, eps=0.1, step_size=0.025, steps=5)
    np.testing.assert_allclose(np.asarray(ours(cnn, x, y)), np.asarray(host), atol=1e-6)
    labels = re.findall(r"dim_labels=(\S+?),", ours.lower(cnn, x, y).compile().as_text())
    assert "b01f_01oi->b01f" not in labels, labels  # the first layer's input-gradient is canonical
    ref_labels = re.findall(r"dim_labels=(\S+?),", ref.lower(cnn, x, y).compile().as_text())
    assert "b01f_01oi->b01f" in ref_labels  # ... and is not without the rewrite


def test_rewrite_is_used(cnn, data, monkeypatch):
    """Breaking the rewritten conv must change the result (the test can fail)."""
    x, y = data
    good = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.1, steps=3))(cnn, x, y)
    orig = conv_rewrite.fast_conv
    monkeypatch.setattr(conv_rewrite, "fast_conv", lambda a, b, p: orig(a, b, p) * 0.0)
    monkeypatch.setattr(conv_rewrite, "_plans", type(conv_rewrite._plans)())
    bad = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.1, steps=3))(cnn, x, y)
    assert not np.allclose(np.asarray(good), np.asarray(bad))


def test_rematerialised_model_is_rewritten_too(cnn, data):
    """Convolutions inside jax.checkpoint (nn.remat blocks) are made canonical as well,
    with the same result."""
    x, y = data
    remat = jax.tree_util.Partial(lambda f, x: jax.checkpoint(f)(x), cnn)
    run = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.1, step_size=0.025, steps=3))
    np.testing.assert_allclose(np.asarray(run(remat, x, y)), np.asarray(run(cnn, x, y)), atol=1e-6)
    labels = re.findall(r"dim_labels=(\S+?),", run.lower(remat, x, y).compile().as_text())
    assert "b01f_01oi->b01f" not in labels, labels


def test_rewrite_failure_falls_back_with_a_warning(cnn, data, monkeypatch, caplog):
    """A primitive that does not re-bind: the plain step runs (same result) and it is logged."""
    x, y = data[0][:3], data[1][:3]  # a batch size no other test compiles

    def broken(*args):
        raise NotImplementedError("primitive parameters do not round-trip")

    monkeypatch.setattr(conv_rewrite, "evaluate", broken)
    monkeypatch.setattr(conv_rewrite, "_warned", set())
    monkeypatch.setattr(conv_rewrite, "_plans", type(conv_rewrite._plans)())
    with caplog.at_level("WARNING", logger="jaxadv"):
        out = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.1, step_size=0.025, steps=2))(cnn, x, y)
    assert any("convolution rewrite" in r.getMessage() for r in caplog.records)
    ref = jax.jit(functools.partial(plain_fori, steps=2))(cnn, x, y)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)


@pytest.mark.slow
def test_vmap_and_grad(cnn, data):
    x, y = data
    ref = jax.jit(functools.partial(plain_fori, steps=3))(cnn, x, y)
    per_example = jax.jit(
        jax.vmap(lambda xi, yi: jaxadv.bim(cnn, xi[None], yi[None], eps=0.1, step_size=0.025, steps=3)[0])
    )(x, y)
    np.testing.assert_allclose(np.asarray(per_example), np.asarray(ref), atol=1e-6)

    def loss(eps, loop):
        xa = jaxadv.bim(cnn, x, y, eps=eps, step_size=eps / 4, steps=3, loop=loop)
        return jnp.sum(xa**2)

    g = jax.grad(loss)(jnp.float32(0.1), "fori")
    with config.override(conv_rewrite=False):
        g_ref = jax.grad(loss)(jnp.float32(0.1), "fori")
    np.testing.assert_allclose(float(g), float(g_ref), rtol=1e-5)


def test_checked(cnn, data):
    x, y = data
    err, xa = jax.jit(jaxadv.checked(jaxadv.pgd), static_argnames=("steps",))(
        cnn, x, y, key=jax.random.key(0), eps=0.1, steps=3
    )
    err.throw()
    assert xa.shape == x.shape


def _nchw_apply(params, x):
    w1, w2, wd = params
    h = jnp.transpose(x, (0, 3, 1, 2))  # NCHW
    h = jax.nn.relu(
        lax.conv_general_dilated(h, w1, (2, 2), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    )
    h = jax.nn.relu(
        lax.conv_general_dilated(
            h, w2, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=4
        )
    )
    return h.reshape(h.shape[0], -1) @ wd


def _conv1d_apply(params, x):
    w, wd = params
    h = x.reshape(x.shape[0], 64, 1)
    h = jax.nn.relu(lax.conv_general_dilated(h, w, (2,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")))
    return h.reshape(h.shape[0], -1) @ wd


@pytest.mark.slow
@pytest.mark.parametrize("which", ["nchw_grouped", "conv1d"])
def test_other_layouts(which, data):
    x, y = data
    k = jax.random.split(jax.random.key(3), 3)
    if which == "nchw_grouped":
        params = [
            jax.random.normal(k[0], (8, 1, 3, 3)),
            jax.random.normal(k[1], (8, 2, 3, 3)) * 0.3,
            jax.random.normal(k[2], (8 * 4 * 4, 10)) * 0.1,
        ]
        f = jaxadv.from_apply(_nchw_apply, params)
    else:
        params = [jax.random.normal(k[0], (5, 1, 6)), jax.random.normal(k[1], (6 * 32, 10)) * 0.1]
        f = jaxadv.from_apply(_conv1d_apply, params)
    ours = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.1, step_size=0.025, steps=3))(f, x, y)
    ref = jax.jit(functools.partial(plain_fori, steps=3))(f, x, y)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-6)


def test_mlp_untouched(data):
    x, y = data
    m = examples.DigitsMLP()
    f = jaxadv.from_flax(m, m.init(jax.random.key(0), x[:1]))
    ours = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.1, step_size=0.025, steps=3))
    ref = jax.jit(functools.partial(plain_fori, steps=3))
    np.testing.assert_array_equal(np.asarray(ours(f, x, y)), np.asarray(ref(f, x, y)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(
            lambda f, x, y: jaxadv.vmifgsm(f, x, y, key=jax.random.key(1), eps=0.1, steps=2, num_neighbors=3),
            id="vmi-scan",
        ),
        pytest.param(
            lambda f, x, y: jaxadv.eot_pgd(
                f, x, y, key=jax.random.key(1), eps=0.1, steps=2, num_samples=2, transform=_jitter
            ),
            id="eot-scan",
        ),
    ],
)
def test_convolutions_in_nested_loops_are_rewritten(cnn, data, monkeypatch, attack):
    """EOT's draws and VMI's neighbours are scans inside the step: their convolutions
    are canonical too, with the result of the unrewritten loop."""
    x, y = data
    run = jax.jit(attack)
    labels = re.findall(r"dim_labels=(\S+?),", run.lower(cnn, x, y).compile().as_text())
    assert "b01f_01oi->b01f" not in labels, labels
    got = run(cnn, x, y)
    monkeypatch.setattr(conv_rewrite, "PLATFORMS", ())
    plain = jax.jit(lambda f, x, y: attack(f, x, y))
    ref_labels = re.findall(r"dim_labels=(\S+?),", plain.lower(cnn, x, y).compile().as_text())
    assert "b01f_01oi->b01f" in ref_labels
    np.testing.assert_allclose(np.asarray(got), np.asarray(plain(cnn, x, y)), atol=1e-6)


def _jitter(key, x):
    return x + 0.01 * jax.random.normal(key, x.shape)
