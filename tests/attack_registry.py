"""One table of every public attack, with a minimal valid call: the registry that the
cross-cutting tests (``tests/test_registry.py``) loop over.

Adding an attack to the library means adding one :class:`Spec` line to
:data:`ATTACKS`; ``test_registry.py::test_registry_lists_every_public_attack``
fails until it is there. Budgets are tiny (2-3 steps, a few dozen queries): the
tests check contracts (ball, box, dtype, compilation, determinism, success), not
strength.

The model is a small MLP on ``8 x 8 x 1`` NHWC inputs with 4 classes and fixed
random weights (:func:`make_params`), built with :func:`jaxadv.from_apply`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, cast

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import compose

SHAPE = (8, 8, 1)  # one example, NHWC
HIDDEN = 8
CLASSES = 4  # apgd_targeted needs >= 4 (num_target_classes=3 below), the DLR loss >= 3
BATCH = 5
EPS = 0.05  # L-inf radius of the ball attacks (every entry below is L-inf)


def apply(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """A one-hidden-layer tanh MLP on the flattened ``[batch, 8, 8, 1]`` input: 4 logits."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def make_params(seed: int = 1) -> dict[str, jax.Array]:
    """Fixed random weights (NumPy draws: nothing to compile). Seed 1 is the tests'
    model; another seed gives a "retrained" model of the same shapes. With seed 1 the
    attacks below fool some but not all of ``make_batch()``'s 5 examples (two are
    classified with probability > 0.95), so their success masks are mixed."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(SHAPE))
    return {
        "w1": jnp.asarray(rng.normal(size=(n, HIDDEN)) * 2.0 / np.sqrt(n), jnp.float32),
        "b1": jnp.asarray(0.5 * rng.normal(size=(HIDDEN,)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(HIDDEN, CLASSES)) * 2.0, jnp.float32),
        "b2": jnp.zeros((CLASSES,), jnp.float32),
    }


def make_batch(bounds: tuple[float, float] = (0.0, 1.0), seed: int = 1) -> jax.Array:
    """``[BATCH, 8, 8, 1]`` float32 inputs uniform in ``bounds``, with a few pixels
    exactly at ``lo`` and at ``hi`` (so that the box, not only the ball, binds)."""
    lo, hi = bounds
    rng = np.random.default_rng(seed)
    x = lo + (hi - lo) * rng.uniform(size=(BATCH, *SHAPE))
    x[:, 0, :4] = lo
    x[:, -1, :4] = hi
    return jnp.asarray(x, jnp.float32)


@dataclasses.dataclass(frozen=True, repr=False)
class Spec:
    """One public attack and a minimal valid call of it.

    Attributes:
      name: the attack's public name (``jaxadv.<name>``), or a label for a
        user-built :class:`jaxadv.compose.Attack`.
      fn: the callable, ``fn(logits_fn, x, y, **kwargs)``.
      kwargs: minimal keyword arguments (tiny budgets); ``key`` is added by :func:`call`.
      norm: the threat model's norm for attacks with an ``eps``-ball (``kwargs["eps"]``);
        ``None`` for minimal-norm attacks (no ball: only the box is guaranteed).
      keyed: the attack takes a ``key`` and draws random numbers from it.
      targeted: the attack accepts ``targeted=True`` (``y`` then holds the targets).
      y_optional: ``y=None`` means the model's predictions on ``x``.
      retune: traced hyperparameters (besides ``eps``) with new values that must
        reuse the compiled program.
    """

    name: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    norm: str | None
    keyed: bool
    targeted: bool
    y_optional: bool = True
    retune: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_ball(self) -> bool:
        return self.norm is not None

    def __repr__(self) -> str:  # the pytest id
        return self.name


def _named(fn: Callable[..., Any], norm: str | None, *, keyed: bool, targeted: bool, **kwargs: Any) -> Spec:
    """The spec of ``jaxadv.<fn.__name__>`` called with ``kwargs``."""
    retune = kwargs.pop("retune", {})
    return Spec(fn.__name__, fn, kwargs, norm, keyed=keyed, targeted=targeted, retune=retune)


#: A user-built attack (EOT gradient + momentum, L-inf ball with a random start): the
#: composition API must honour the same contracts as the named attacks.
COMPOSED = compose.Attack(compose.eot(num_samples=2), compose.momentum(0.9), norm="linf", random_start=True)

L_INF, NO_BALL = "linf", None
E = EPS

#: Every public attack, one line each (see the module docstring).
ATTACKS: tuple[Spec, ...] = (
    _named(jaxadv.fgsm, L_INF, keyed=False, targeted=True, eps=E),
    _named(jaxadv.bim, L_INF, keyed=False, targeted=True, eps=E, steps=2),
    _named(jaxadv.pgd, L_INF, keyed=True, targeted=True, eps=E, steps=2),
    _named(jaxadv.eot_pgd, L_INF, keyed=True, targeted=True, eps=E, steps=2, num_samples=2),
    _named(jaxadv.mifgsm, L_INF, keyed=False, targeted=True, eps=E, steps=2),
    _named(jaxadv.nifgsm, L_INF, keyed=False, targeted=True, eps=E, steps=2),
    _named(jaxadv.vmifgsm, L_INF, keyed=True, targeted=True, eps=E, steps=2, num_neighbors=2),
    _named(jaxadv.tifgsm, L_INF, keyed=True, targeted=True, eps=E, steps=2, kernel_size=3),
    _named(jaxadv.apgd, L_INF, keyed=True, targeted=True, eps=E, steps=3),
    _named(jaxadv.apgd_targeted, L_INF, keyed=True, targeted=False, eps=E, steps=3, num_target_classes=3),
    _named(jaxadv.fab, L_INF, keyed=True, targeted=False, eps=E, steps=3, retune={"eta": 1.2}),
    _named(
        jaxadv.fab_targeted,
        L_INF,
        keyed=True,
        targeted=False,
        eps=E,
        steps=3,
        num_target_classes=2,
        retune={"alpha_max": 0.2},
    ),
    _named(
        jaxadv.cw_l2,
        NO_BALL,
        keyed=False,
        targeted=True,
        steps=3,
        binary_search_steps=2,
        retune={"initial_const": 0.02},
    ),
    _named(
        jaxadv.deepfool,
        NO_BALL,
        keyed=False,
        targeted=True,
        steps=3,
        num_candidates=4,
        retune={"overshoot": 0.05},
    ),
    _named(
        jaxadv.ead,
        NO_BALL,
        keyed=False,
        targeted=True,
        steps=3,
        binary_search_steps=2,
        initial_const=1.0,
        learning_rate=0.1,
        retune={"beta": 0.01},
    ),
    _named(jaxadv.fmn, NO_BALL, keyed=False, targeted=True, steps=3, retune={"alpha_init": 0.5}),
    _named(jaxadv.jsma, NO_BALL, keyed=False, targeted=True, gamma=0.1, retune={"theta": 0.5}),
    _named(jaxadv.square, L_INF, keyed=True, targeted=True, eps=E, queries=24),
    _named(jaxadv.sparse_rs, NO_BALL, keyed=True, targeted=True, k=3, queries=24),
    _named(jaxadv.spsa, L_INF, keyed=True, targeted=True, eps=E, queries=24, num_samples=4),
    _named(jaxadv.nes, L_INF, keyed=True, targeted=True, eps=E, queries=24, num_samples=4),
    _named(
        jaxadv.hop_skip_jump,
        NO_BALL,
        keyed=True,
        targeted=True,
        queries=40,
        init_evals=4,
        max_evals=8,
        init_tries=8,
        geometric_steps=4,
    ),
    Spec("compose.Attack", COMPOSED, {"eps": E, "steps": 2}, L_INF, keyed=True, targeted=True),
)

BY_NAME = {s.name: s for s in ATTACKS}


def parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The parameters of an attack's signature (a composed attack's ``__call__``)."""
    return dict(inspect.signature(fn).parameters)


def accepts(spec: Spec, argument: str) -> bool:
    """Whether the attack has a keyword argument named ``argument``."""
    return argument in parameters(spec.fn)


def returns_info(spec: Spec) -> bool:
    """Whether the attack takes ``return_info`` (returns a bare array by default)."""
    return accepts(spec, "return_info")


def call(
    spec: Spec,
    logits_fn: Any,
    x: Any,
    y: Any = None,
    *,
    key: Any = None,
    info: bool = False,
    **overrides: Any,
) -> Any:
    """Run ``spec``'s minimal call, with ``overrides`` on top of its kwargs.

    ``key`` defaults to ``jax.random.key(0)`` for keyed attacks. ``info=True`` asks
    for the :class:`jaxadv.AttackResult` (``return_info=True``) where the attack
    takes it: this is the only place the registry passes ``return_info``.
    """
    kwargs = {**spec.kwargs, **overrides}
    if spec.keyed:
        kwargs["key"] = jax.random.key(0) if key is None else key
    if info and returns_info(spec):
        kwargs["return_info"] = True
    return spec.fn(logits_fn, x, y, **kwargs)


def x_adv(out: Any) -> jax.Array:
    """The adversarial array of an attack's output: the array itself, or the
    ``x_adv`` field of a result tuple (``AttackResult``, or a black-box result)."""
    return cast(Any, out).x_adv if isinstance(out, tuple) else out


def success(out: Any) -> jax.Array | None:
    """The success mask an output carries, ``None`` for a bare array."""
    return cast(Any, out).success if isinstance(out, tuple) else None


def public_attack_names() -> set[str]:
    """Names in ``jaxadv.__all__`` that are attacks, by this rule: a callable that is
    not a class (a function, or a configured :class:`jaxadv.compose.Attack`) whose
    first three parameters are ``(logits_fn, x, y)`` with ``y`` defaulting to
    ``None`` (``prepare`` and ``is_adversarial`` take ``y`` without a default;
    adapters and wrappers take other first arguments)."""
    names = set()
    for name in jaxadv.__all__:
        obj = getattr(jaxadv, name)
        if not callable(obj) or inspect.isclass(obj):
            continue
        params = list(inspect.signature(obj).parameters.values())[:3]
        if [p.name for p in params] == ["logits_fn", "x", "y"] and params[2].default is None:
            names.add(name)
    return names
