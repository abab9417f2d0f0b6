"""One table of every public attack, with a minimal valid call: the registry that the
cross-cutting tests loop over.

Three test files draw their attacks from it: ``tests/test_registry.py`` (the
contracts every attack honours), ``tests/test_attack_faults.py`` (huge logits, NaN
rows, empty batches, bad inputs) and ``tests/test_sharding.py`` (8 devices against
one). Adding an attack to the library means adding one :class:`Spec` line to
:data:`ATTACKS`; ``test_registry.py::test_registry_lists_every_public_attack``
fails until it is there, and the line enters all three. Budgets are tiny (2-3
steps, a few dozen queries): the tests check contracts (ball, box, dtype,
compilation, determinism, success, faults, sharding), not strength.

A spec says what a case needs to know of the attack: whether it follows the
model's input gradient or only queries its outputs (:attr:`Spec.gradient`),
whether it searches an ``eps``-ball or for a minimal perturbation
(:attr:`Spec.norm`), whether it draws random numbers (:attr:`Spec.keyed`), and
the :attr:`Spec.variants` whose code paths differ (another norm, loss or threat
model), which :func:`expand` turns into specs of their own.

The registry's model is a small tanh MLP on ``8 x 8 x 1`` NHWC inputs with 4
classes and fixed random weights (:func:`make_params`), built with
:func:`jaxadv.from_apply` from :func:`small_models.tanh_mlp_apply`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from small_models import tanh_mlp_apply

import jaxadv
from jaxadv import compose

SHAPE = (8, 8, 1)  # one example, NHWC
HIDDEN = 8
CLASSES = 4  # apgd_targeted needs >= 4 (num_target_classes=3 below), the DLR loss >= 3
BATCH = 5
EPS = 0.05  # L-inf radius of the ball attacks (every entry below is L-inf)


#: The model: a one-hidden-layer tanh MLP on the flattened ``[batch, 8, 8, 1]`` input.
apply = tanh_mlp_apply


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


class Variant(NamedTuple):
    """A configuration of an attack whose code path differs from its minimal call.

    Attributes:
      kwargs: keyword arguments laid over the spec's (:data:`DROP` removes one).
      keyed: the variant draws random numbers although the attack's default does not.
    """

    kwargs: dict[str, Any]
    keyed: bool = False


#: A :class:`Variant` keyword whose value is ``DROP`` removes the spec's keyword.
DROP: Any = object()


@dataclasses.dataclass(frozen=True, repr=False)
class Spec:
    """One public attack and a minimal valid call of it.

    Attributes:
      name: the attack's public name (``jaxadv.<name>``), or a label for a
        user-built :class:`jaxadv.compose.Attack`; ``name:variant`` for a variant
        made by :func:`expand`.
      fn: the callable, ``fn(logits_fn, x, y, **kwargs)``.
      kwargs: minimal keyword arguments (tiny budgets); ``key`` is added by :func:`call`.
      norm: the threat model's norm for attacks with an ``eps``-ball (``kwargs["eps"]``);
        ``None`` for minimal-norm attacks (no ball: only the box is guaranteed).
      keyed: the attack takes a ``key`` and draws random numbers from it.
      targeted: the attack accepts ``targeted=True`` (``y`` then holds the targets).
      gradient: the attack follows the model's input gradient (white-box); ``False``
        for score- and decision-based attacks, which only query the model's outputs
        and report per-example ``queries`` (:attr:`black_box`).
      keeps_best: the attack returns the best point it has seen (so never a point
        where the model's logits are not finite, unless ``x`` itself).
      y_optional: ``y=None`` means the model's predictions on ``x``.
      retune: traced hyperparameters (besides ``eps``) with new values that must
        reuse the compiled program.
      variants: named configurations whose code paths differ (see :func:`expand`).
    """

    name: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    norm: str | None
    keyed: bool
    targeted: bool
    gradient: bool = True
    keeps_best: bool = False
    y_optional: bool = True
    retune: dict[str, Any] = dataclasses.field(default_factory=dict)
    variants: dict[str, Variant] = dataclasses.field(default_factory=dict)

    @property
    def has_ball(self) -> bool:
        return self.norm is not None

    @property
    def black_box(self) -> bool:
        """Score- or decision-based: only the model's outputs are used."""
        return not self.gradient

    @property
    def attack(self) -> str:
        """The attack's name without the variant."""
        return self.name.split(":")[0]

    def __repr__(self) -> str:  # the pytest id
        return self.name


def _named(
    fn: Callable[..., Any],
    norm: str | None,
    *,
    keyed: bool,
    targeted: bool,
    gradient: bool = True,
    keeps_best: bool = False,
    retune: dict[str, Any] | None = None,
    variants: dict[str, Variant] | None = None,
    **kwargs: Any,
) -> Spec:
    """The spec of ``jaxadv.<fn.__name__>`` called with ``kwargs``."""
    return Spec(
        fn.__name__,
        fn,
        kwargs,
        norm,
        keyed=keyed,
        targeted=targeted,
        gradient=gradient,
        keeps_best=keeps_best,
        retune=retune or {},
        variants=variants or {},
    )


def expand(spec: Spec) -> list[Spec]:
    """``spec`` followed by one spec per variant (``name:variant``), each with the
    variant's keywords laid over the spec's, its norm (``kwargs["norm"]`` where the
    variant keeps an ``eps``), and no variants of its own."""
    out = [spec]
    for label, variant in spec.variants.items():
        kwargs = {**spec.kwargs, **variant.kwargs}
        kwargs = {k: v for k, v in kwargs.items() if v is not DROP}
        norm = jaxadv.validation.check_norm(kwargs.get("norm", "linf")) if "eps" in kwargs else None
        out.append(
            dataclasses.replace(
                spec,
                name=f"{spec.name}:{label}",
                kwargs=kwargs,
                norm=norm,
                keyed=spec.keyed or variant.keyed,
                retune={},
                variants={},
            )
        )
    return out


#: A user-built attack (EOT gradient + momentum, L-inf ball with a random start): the
#: composition API must honour the same contracts as the named attacks.
COMPOSED = compose.Attack(compose.eot(num_samples=2), compose.momentum(0.9), norm="linf", random_start=True)

L_INF, NO_BALL = "linf", None
E = EPS
#: The variants shared by several attacks.
L2 = Variant({"norm": "l2", "eps": 0.5})
L1 = Variant({"norm": "l1", "eps": 1.0})

#: Every public attack, one line each (see the module docstring).
ATTACKS: tuple[Spec, ...] = (
    _named(jaxadv.fgsm, L_INF, keyed=False, targeted=True, eps=E),
    _named(jaxadv.bim, L_INF, keyed=False, targeted=True, variants={"l2": L2}, eps=E, steps=2),
    _named(
        jaxadv.pgd,
        L_INF,
        keyed=True,
        targeted=True,
        variants={"l2": L2, "l1": L1, "margin": Variant({"loss": jaxadv.cw_margin})},
        eps=E,
        steps=2,
    ),
    _named(jaxadv.eot_pgd, L_INF, keyed=True, targeted=True, eps=E, steps=2, num_samples=2),
    _named(
        jaxadv.mifgsm,
        L_INF,
        keyed=False,
        targeted=True,
        keeps_best=True,
        variants={"l2": L2, "diverse": Variant({"diversity_prob": 1.0}, keyed=True)},
        eps=E,
        steps=2,
    ),
    _named(jaxadv.nifgsm, L_INF, keyed=False, targeted=True, eps=E, steps=2),
    _named(jaxadv.vmifgsm, L_INF, keyed=True, targeted=True, eps=E, steps=2, num_neighbors=2),
    _named(jaxadv.tifgsm, L_INF, keyed=True, targeted=True, eps=E, steps=2, kernel_size=3),
    _named(
        jaxadv.apgd,
        L_INF,
        keyed=True,
        targeted=True,
        keeps_best=True,
        variants={"dlr": Variant({"loss": "dlr"}), "l2": L2},
        eps=E,
        steps=3,
    ),
    _named(
        jaxadv.apgd_targeted,
        L_INF,
        keyed=True,
        targeted=False,
        keeps_best=True,
        eps=E,
        steps=3,
        num_target_classes=3,
    ),
    _named(
        jaxadv.fab,
        L_INF,
        keyed=True,
        targeted=False,
        retune={"eta": 1.2},
        # Without eps: the minimal-norm search.
        variants={"l2": Variant({"norm": "l2", "eps": DROP})},
        eps=E,
        steps=3,
    ),
    _named(
        jaxadv.fab_targeted,
        L_INF,
        keyed=True,
        targeted=False,
        retune={"alpha_max": 0.2},
        eps=E,
        steps=3,
        num_target_classes=2,
    ),
    _named(
        jaxadv.cw_l2,
        NO_BALL,
        keyed=False,
        targeted=True,
        keeps_best=True,
        retune={"initial_const": 0.02},
        steps=3,
        binary_search_steps=2,
    ),
    _named(
        jaxadv.deepfool,
        NO_BALL,
        keyed=False,
        targeted=True,
        retune={"overshoot": 0.05},
        variants={"linf": Variant({"norm": "linf"})},
        steps=3,
        num_candidates=4,
    ),
    _named(
        jaxadv.ead,
        NO_BALL,
        keyed=False,
        targeted=True,
        retune={"l1_weight": 0.01},
        steps=3,
        binary_search_steps=2,
        initial_const=1.0,
        learning_rate=0.1,
    ),
    _named(
        jaxadv.fmn,
        NO_BALL,
        keyed=False,
        targeted=True,
        retune={"alpha_init": 0.5},
        variants={"l0": Variant({"norm": "l0"})},
        steps=3,
    ),
    _named(jaxadv.jsma, NO_BALL, keyed=False, targeted=True, retune={"theta": 0.5}, gamma=0.1),
    _named(
        jaxadv.square,
        L_INF,
        keyed=True,
        targeted=True,
        gradient=False,
        keeps_best=True,
        variants={"l2": L2},
        eps=E,
        queries=24,
    ),
    _named(
        jaxadv.sparse_rs,
        NO_BALL,
        keyed=True,
        targeted=True,
        gradient=False,
        variants={
            "patch": Variant({"threat": "patch", "k": 2}),
            "frame": Variant({"threat": "frame", "k": 1}),
        },
        k=3,
        queries=24,
    ),
    _named(
        jaxadv.spsa,
        L_INF,
        keyed=True,
        targeted=True,
        gradient=False,
        keeps_best=True,
        eps=E,
        queries=24,
        num_samples=4,
    ),
    _named(
        jaxadv.nes,
        L_INF,
        keyed=True,
        targeted=True,
        gradient=False,
        keeps_best=True,
        eps=E,
        queries=24,
        num_samples=4,
    ),
    _named(
        jaxadv.hop_skip_jump,
        NO_BALL,
        keyed=True,
        targeted=True,
        gradient=False,
        keeps_best=True,
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
