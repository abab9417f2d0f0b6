"""The convolution rewrite of attack loops on XLA:CPU (jaxadv._core.conv_rewrite) and its switch.

* One convolution: the rewritten form (layout transposes, the phase split of an
  input-dilated convolution) equals ``lax.conv_general_dilated`` over strides,
  kernel dilations, paddings (negative ones included), kernel sizes, layouts and
  1-D/2-D/3-D convolutions.
* Zoo models (small widths): the rewritten input gradient equals ``jax.grad``'s,
  PGD with the rewrite equals PGD without it, and the compiled loop holds no
  slow-path convolution (every convolution of the loop body is a YNNPACK
  fusion) and no kernel reversal (the kernels are prepared before the loop).
* Models whose convolutions sit inside ``custom_vjp``, ``custom_jvp`` or
  ``shard_map``: results equal with and without the rewrite.
* The hoisting only takes what is loop-invariant; the rewritten step is cached;
  the switch (``jaxadv.config``) turns it off; off on other backends; a direct
  call with ``loop="fori"`` compiles once.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxadv
from jaxadv import config, engine, zoo
from jaxadv._core import conv_rewrite
from jaxadv._core import jaxpr as jaxpr_walk

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rewrite runs on XLA:CPU only")


def _reference(lhs: jax.Array, rhs: jax.Array, **params: Any) -> jax.Array:
    return lax.conv_general_dilated(lhs, rhs, **params)


def _params(
    lhs_dilation: tuple[int, ...], rhs_dilation: tuple[int, ...], padding: Any, dn: Any
) -> dict[str, Any]:
    return dict(
        window_strides=(1,) * len(lhs_dilation),
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dn,
    )


def _bound_params(lhs: jax.Array, rhs: jax.Array, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters ``conv_general_dilated`` binds its primitive with, read from its jaxpr."""
    eqn = jax.make_jaxpr(lambda a, b: lax.conv_general_dilated(a, b, **params))(lhs, rhs).jaxpr.eqns[0]
    assert eqn.primitive.name == "conv_general_dilated"
    return dict(eqn.params)


CASES = [
    # spatial input, kernel, lhs (input) dilation, kernel dilation, padding per axis
    ((4, 4), (3, 3), (2, 2), (1, 1), [(1, 2), (1, 2)]),  # a 3x3 stride-2 convolution's input gradient
    ((4, 4), (1, 1), (2, 2), (1, 1), [(0, 1), (0, 1)]),  # a 1x1 stride-2 shortcut's
    ((5, 6), (3, 3), (2, 2), (1, 1), [(1, 1), (2, 1)]),  # odd sizes
    ((7, 5), (3, 2), (3, 2), (1, 1), [(2, 2), (1, 0)]),  # stride 3 and 2, rectangular kernel
    ((6, 6), (5, 5), (2, 2), (2, 2), [(3, 4), (4, 3)]),  # with kernel dilation
    ((5, 5), (2, 2), (3, 3), (2, 2), [(1, 0), (0, 1)]),  # dilation and stride coprime
    ((8, 8), (4, 4), (2, 2), (1, 1), [(2, 2), (2, 2)]),  # even kernel
    ((3, 4), (3, 3), (2, 2), (1, 1), [(-1, 0), (0, -1)]),  # negative padding
    ((4, 4), (3, 3), (2, 2), (1, 1), [(0, 0), (0, 0)]),  # no padding
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-d{c[3]}")
@pytest.mark.parametrize("layout", [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")])
def test_phase_split_equals_the_dilated_convolution(
    case: Any, layout: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conv_rewrite, "POLYPHASE", True)
    spatial, kernel, s, d, padding = case
    rng = np.random.default_rng(0)
    if layout[0] == "NHWC":
        lhs = rng.normal(size=(2, *spatial, 5))
        rhs = rng.normal(size=(*kernel, 5, 7))
    else:
        lhs = rng.normal(size=(2, 5, *spatial))
        rhs = rng.normal(size=(7, 5, *kernel))
    lhs, rhs = jnp.asarray(lhs, jnp.float32), jnp.asarray(rhs, jnp.float32)
    params = _params(s, d, padding, layout)
    want = _reference(lhs, rhs, **params)
    got = conv_rewrite.fast_conv(lhs, rhs, _bound_params(lhs, rhs, params))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # The rewritten form has no input dilation left, and is canonical.
    eqns = jax.make_jaxpr(lambda a, b: conv_rewrite.fast_conv(a, b, _bound_params(lhs, rhs, params)))(
        lhs, rhs
    )
    for eqn in eqns.jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            assert all(v == 1 for v in eqn.params["lhs_dilation"])
            n = lhs.ndim
            assert eqn.params["dimension_numbers"].lhs_spec == (0, n - 1, *range(1, n - 1))


@pytest.mark.parametrize(
    "spatial, kernel, s",
    [((5,), (3,), (2,)), ((3, 4, 3), (3, 2, 3), (2, 3, 2))],
    ids=["1d", "3d"],
)
def test_phase_split_in_one_and_three_dimensions(
    spatial: Any, kernel: Any, s: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conv_rewrite, "POLYPHASE", True)
    rng = np.random.default_rng(1)
    lhs = jnp.asarray(rng.normal(size=(2, *spatial, 3)), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)
    spec = "NWC" if len(spatial) == 1 else "NDHWC"
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, (spec, spec[1:-1] + "IO", spec))
    params = _params(s, (1,) * len(s), [(1, 1)] * len(s), dn)
    want = _reference(lhs, rhs, **params)
    got = conv_rewrite.fast_conv(lhs, rhs, _bound_params(lhs, rhs, params))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


# --- zoo models ---------------------------------------------------------------------------


def _zoo(arch: str, size: int, batch: int = 2) -> tuple[Any, jax.Array, jax.Array]:
    module = zoo.build(arch)
    x = jnp.asarray(np.random.default_rng(0).uniform(0.0, 1.0, (batch, size, size, 3)), jnp.float32)
    variables = module.init(jax.random.key(0), x[:1])
    f = jaxadv.from_flax(module, variables)
    return f, x, jaxadv.predict(f, x)


def _gradient(f: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss(v: jax.Array) -> jax.Array:
        logits = f(v)
        return jnp.sum(jaxadv.cross_entropy(logits, jax.nn.one_hot(y, logits.shape[-1])))

    return jax.grad(loss)(x)


def _loop_body_convolutions(text: str) -> list[str]:
    """The convolution instructions of the while bodies of an optimised HLO module,
    each with whether it is the root of a YNNPACK fusion's computation."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%(\S+) ", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(2)
            comps[current] = []
        elif current is not None:
            comps[current].append(line)
    bodies = {m for lines in comps.values() for line in lines for m in re.findall(r"body=%([\w.\-]+)", line)}
    ynn = {
        m
        for lines in comps.values()
        for line in lines
        for m in re.findall(r"ynn_fusion\S* = .*calls=%([\w.\-]+)", line)
    }
    found = []
    for body in bodies:
        for line in comps[body]:
            if " convolution(" in line:
                found.append("plain " + line.strip())
            called = re.search(r"calls=%([\w.\-]+)", line)
            if called and any(" convolution(" in inner for inner in comps.get(called.group(1), [])):
                found.append(("ynn " if called.group(1) in ynn else "fused ") + line.strip())
    return found


def _tiny_window(instruction: str) -> bool:
    """Whether a convolution instruction's window is at most 2 wide in every spatial dimension."""
    m = re.search(r"window=\{size=([\dx]+)", instruction)
    return m is not None and all(int(d) <= 2 for d in m.group(1).split("x"))


ZOO = [
    pytest.param("wrn-10-1", 16, id="wrn-10-1"),
    pytest.param("dm-wrn-10-1", 16, id="dm-wrn-10-1", marks=pytest.mark.slow),
    pytest.param("preact-resnet-18", 16, id="preact-resnet-18", marks=pytest.mark.slow),
    pytest.param("resnet-18", 32, id="resnet-18", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch, size", ZOO)
def test_zoo_gradient_and_pgd_equal_without_slow_convolutions(arch: str, size: int) -> None:
    f, x, y = _zoo(arch, size)
    plain = jax.jit(_gradient)(f, x, y)
    rewritten = jax.jit(conv_rewrite.rewrite(_gradient))(f, x, y)
    scale = float(jnp.max(jnp.abs(plain)))
    np.testing.assert_allclose(np.asarray(rewritten), np.asarray(plain), atol=1e-5 * scale)

    def pgd(f: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=8 / 255, step_size=2 / 255, steps=3)

    program = jax.jit(pgd).lower(f, x, y).compile()
    convs = _loop_body_convolutions(program.as_text())
    assert convs, "the PGD loop body holds convolutions"
    # Some small convolutions (3 input channels, or spatially 1x1 inputs) are
    # not YNNPACK's; they must still be canonical and undilated (Eigen), never a loop nest.
    # Where an activation is spatially smaller than the kernel (2x2 against 3x3, the last
    # stage of a 16x16 input), XLA swaps the operands and convolves with the activation
    # as a window of at most 2x2: a few hundred multiply-adds per output, left to Eigen.
    slow = [
        c
        for c in convs
        if c.startswith("fused")
        or ("b01f_01io->b01f" not in c and not c.startswith("ynn") and not _tiny_window(c))
    ]
    assert not slow, slow
    with config.override(conv_rewrite=False):
        want = jax.jit(lambda f, x, y: pgd(f, x, y))(f, x, y)
    np.testing.assert_allclose(np.asarray(program(f, x, y)), np.asarray(want), atol=1e-6)


def test_kernels_are_prepared_before_the_loop() -> None:
    """No reversal of a kernel inside the loop body of a rewritten PGD; there is one without."""
    f, x, y = _zoo("wrn-10-1", 16)

    def reversals_in_loop(rewrite: bool) -> int:
        with config.override(conv_rewrite=rewrite):
            closed = jax.make_jaxpr(
                lambda f, x, y: jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=0.03, step_size=0.01, steps=2)
            )(f, x, y)
        count = 0
        for eqn in closed.jaxpr.eqns:
            for sub in jaxpr_walk.param_jaxprs(eqn.params):
                if eqn.primitive.name in ("scan", "while"):
                    count += _count(sub, "rev")
        return count

    assert reversals_in_loop(False) > 0
    assert reversals_in_loop(True) == 0


def _count(jaxpr: Any, name: str) -> int:
    return sum(e.primitive.name == name for e in jaxpr.eqns) + sum(
        _count(sub, name) for e in jaxpr.eqns for sub in jaxpr_walk.param_jaxprs(e.params)
    )


# --- custom derivatives and shard_map -------------------------------------------------------


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, (2, 2), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def _conv_vjp(x: jax.Array, w: jax.Array) -> jax.Array:
    return _conv(x, w)


def _conv_vjp_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv(x, w), (x, w)


def _conv_vjp_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    _, pullback = jax.vjp(_conv, x, w)
    return pullback(g)


_conv_vjp.defvjp(_conv_vjp_fwd, _conv_vjp_bwd)


@jax.custom_jvp
def _conv_jvp(x: jax.Array, w: jax.Array) -> jax.Array:
    return _conv(x, w)


@_conv_jvp.defjvp
def _conv_jvp_rule(primals: Any, tangents: Any) -> Any:
    x, w = primals
    dx, dw = tangents
    return _conv(x, w), _conv(dx, w) + _conv(x, dw)


def _two_layer(conv: Any) -> Any:
    def apply(params: Any, x: jax.Array) -> jax.Array:
        w1, w2, wd = params
        h = jax.nn.relu(conv(x, w1))
        h = jax.nn.relu(conv(h, w2))
        return h.reshape(h.shape[0], -1) @ wd

    return apply


def _shard_mapped(params: Any, x: jax.Array) -> jax.Array:
    mesh = jax.make_mesh((1,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    spec = jax.sharding.PartitionSpec("batch")
    inner = jax.shard_map(
        lambda x: _two_layer(_conv)(params, x), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
    )
    return inner(x)


MODELS = {
    "custom_vjp": _two_layer(_conv_vjp),
    "custom_jvp": _two_layer(_conv_jvp),
    "shard_map": _shard_mapped,
}


# custom_vjp in the fast tier; custom_jvp and shard_map (about 30-50 s of compilation each
# on two cores) in the slow one. test_custom_jvp_primal_is_rewritten_and_keeps_its_rule
# checks custom_jvp in the fast tier too.
@pytest.mark.parametrize(
    "which",
    [
        "custom_vjp",
        pytest.param("custom_jvp", marks=pytest.mark.slow),
        pytest.param("shard_map", marks=pytest.mark.slow),
    ],
)
def test_custom_derivatives_and_shard_map_give_equal_results(which: str) -> None:
    k = jax.random.split(jax.random.key(1), 4)
    params = [
        jax.random.normal(k[0], (3, 3, 3, 24)) * 0.3,
        jax.random.normal(k[1], (3, 3, 24, 32)) * 0.1,
        jax.random.normal(k[2], (4 * 4 * 32, 10)) * 0.1,
    ]
    f = jaxadv.from_apply(MODELS[which], params)
    x = jax.random.uniform(k[3], (4, 16, 16, 3))
    y = jaxadv.predict(f, x)

    def attack(f: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=0.05, step_size=0.01, steps=3)

    with config.override(conv_rewrite=False):
        plain_jit = jax.jit(lambda f, x, y: attack(f, x, y))(f, x, y)
        plain_direct = attack(f, x, y)
    np.testing.assert_allclose(np.asarray(jax.jit(attack)(f, x, y)), np.asarray(plain_jit), atol=1e-6)
    np.testing.assert_allclose(np.asarray(attack(f, x, y)), np.asarray(plain_direct), atol=1e-6)
    np.testing.assert_allclose(np.asarray(plain_direct), np.asarray(plain_jit), atol=1e-6)

    # Differentiating through the attack (custom rules kept) agrees too.
    def objective(eps: jax.Array, rewrite: bool) -> jax.Array:
        with config.override(conv_rewrite=rewrite):
            xa = jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=eps, step_size=eps / 4, steps=2, loop="fori")
        return jnp.sum(f(xa) ** 2)

    g_on = jax.grad(objective)(jnp.float32(0.05), True)
    g_off = jax.grad(objective)(jnp.float32(0.05), False)
    np.testing.assert_allclose(float(g_on), float(g_off), rtol=1e-4)


def test_custom_jvp_primal_is_rewritten_and_keeps_its_rule() -> None:
    """A forward-only step through a custom_jvp convolution in NCHW: the primal is
    rewritten (canonical convolution inside), the custom rule is still the one used."""

    @jax.custom_jvp
    def conv_nchw(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))

    @conv_nchw.defjvp
    def rule(primals: Any, tangents: Any) -> Any:
        x, w = primals
        return conv_nchw(x, w), 2.0 * conv_nchw(tangents[0], w)  # deliberately not the true derivative

    x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))
    w = jax.random.normal(jax.random.key(1), (4, 3, 3, 3))
    fn = conv_rewrite.rewrite(lambda x: jnp.sum(conv_nchw(x, w) ** 2))
    closed = jax.make_jaxpr(fn)(x)
    (call,) = [e for e in closed.jaxpr.eqns if e.primitive.name == "custom_jvp_call"]
    inner = call.params["call_jaxpr"].jaxpr
    convs = [e for e in inner.eqns if e.primitive.name == "conv_general_dilated"]
    assert convs and all(e.params["dimension_numbers"].lhs_spec == (0, 3, 1, 2) for e in convs)
    np.testing.assert_allclose(fn(x), jnp.sum(conv_nchw(x, w) ** 2), rtol=1e-5)
    np.testing.assert_allclose(
        jax.grad(fn)(x), jax.grad(lambda x: jnp.sum(conv_nchw(x, w) ** 2))(x), rtol=1e-4, atol=1e-4
    )


# --- the step and its hoisting -----------------------------------------------------------


def _state_dependent_body(i: jax.Array, state: jax.Array, operands: Any, static: None) -> jax.Array:
    """A step whose kernel depends on the step index (not loop-invariant) and on
    the operands (invariant), through an input-dilated convolution's gradient."""
    w, x0 = operands
    kernel = w * (1.0 + 0.1 * i.astype(jnp.float32))

    def loss(x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.tanh(_conv(x, kernel)) + jnp.tanh(_conv(x, w)))

    return state + 0.01 * jax.grad(loss)(state + x0)


@pytest.mark.parametrize("polyphase", [False, True], ids=["eigen-dilated", "phase-split"])
def test_only_loop_invariant_kernels_are_hoisted(polyphase: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_rewrite, "POLYPHASE", polyphase)
    monkeypatch.setattr(conv_rewrite, "_plans", type(conv_rewrite._plans)())
    w = jax.random.normal(jax.random.key(0), (3, 3, 3, 20))
    x0 = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    state = jnp.zeros_like(x0)
    plan = conv_rewrite.plan(_state_dependent_body, None, state, (w, x0))
    assert plan is not None and plan.kernels, "the invariant kernel's preparation is hoisted"
    got = jax.jit(lambda s, w, x0: engine.iterate(_state_dependent_body, s, (w, x0), steps=4, static=None))(
        state, w, x0
    )
    with config.override(conv_rewrite=False):
        want = jax.jit(
            lambda s, w, x0: engine.iterate(_state_dependent_body, s, (w, x0), steps=4, static=None)
        )(state, w, x0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


_traces = 0


def _counting_body(i: jax.Array, state: jax.Array, operands: Any, static: None) -> jax.Array:
    global _traces
    _traces += 1
    return _state_dependent_body(i, state, operands, static)


def test_the_rewritten_step_is_cached() -> None:
    global _traces
    w = jax.random.normal(jax.random.key(0), (3, 3, 3, 20))
    x0 = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    state = jnp.zeros_like(x0)
    _traces = 0
    for _ in range(3):  # three separate traces (new functions) of the same loop
        jax.jit(lambda s, w, x0: engine.iterate(_counting_body, s, (w, x0), steps=2, static=None))(
            state, w, x0
        )
    assert _traces == 1, _traces
    # Another input shape is another step.
    jax.jit(lambda s, w, x0: engine.iterate(_counting_body, s, (w, x0), steps=2, static=None))(
        state[:1], w, x0[:1]
    )
    assert _traces == 2, _traces


def test_direct_fori_call_compiles_once() -> None:
    from test_compilation import COMPILE, count_compiles

    f, x, y = _zoo("wrn-10-1", 8)
    kw = dict(eps=0.03, step_size=0.01, steps=2, loop="fori")
    first = jaxadv.bim(f, x, y, **kw)
    with count_compiles() as c:
        second = jaxadv.bim(f, x, y, **kw)
        second.block_until_ready()
    assert c.count(COMPILE) == 0, c.events
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    np.testing.assert_allclose(
        np.asarray(first), np.asarray(jaxadv.bim(f, x, y, **{**kw, "loop": "compiled"})), atol=1e-6
    )


# --- the switch -----------------------------------------------------------------------------


def test_switch_and_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.read("conv_rewrite") is True
    assert engine._rewriting()
    with config.override(conv_rewrite=False):
        assert config.read("conv_rewrite") is False
        assert not engine._rewriting()
    assert config.read("conv_rewrite") is True
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not engine._rewriting()
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert not engine._rewriting()


def test_switch_off_runs_the_plain_loop() -> None:
    """With the setting off, the loop body is the plain one: its input-gradient
    convolutions keep JAX's kernel layout (the slow path the rewrite avoids)."""
    f, x, y = _zoo("wrn-10-1", 16)

    def labels(rewrite: bool) -> list[str]:
        with config.override(conv_rewrite=rewrite):
            text = (
                jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=0.03, step_size=0.01, steps=2))
                .lower(f, x, y)
                .compile()
                .as_text()
            )
        return [c for c in _loop_body_convolutions(text) if "01oi" in c]

    assert labels(False)
    assert not labels(True)


def test_config_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="name: unknown setting 'conv_rewrites'"):
        config.update("conv_rewrites", False)
    with pytest.raises(ValueError, match="value: setting 'conv_rewrite' takes True or False"):
        config.update("conv_rewrite", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name: unknown setting"):
        config.read("nope")
    for raw, want in (("0", False), ("off", False), ("FALSE", False), ("1", True), ("on", True), ("", True)):
        monkeypatch.setenv("JAXADV_CONV_REWRITE", raw)
        assert config._from_environment("conv_rewrite") is want
    monkeypatch.setenv("JAXADV_CONV_REWRITE", "maybe")
    with pytest.raises(ValueError, match="JAXADV_CONV_REWRITE='maybe'"):
        config._from_environment("conv_rewrite")
    assert config.read("conv_rewrite") is True  # nothing above changed the setting
