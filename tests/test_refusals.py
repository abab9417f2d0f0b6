"""Inputs that must be refused with a ``ValueError`` naming them, and inputs that must
be accepted, at the public boundary.

Every case here was once accepted silently (a NaN momentum decay turned an
attack into a no-op or an all-NaN batch; soft labels made every success flag
wrong) or refused with an unrelated error (``TypeError`` from deep inside JAX,
``ZeroDivisionError``). Most checks fire before anything is compiled; the few
cases that run an attack use the registry's tiny model and budgets.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_registry import ATTACKS, BY_NAME, CLASSES, apply, call, make_batch, make_params

import jaxadv
from jaxadv import compose, evaluation, training, universal

NAN, INF = float("nan"), float("inf")
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def model() -> Any:
    return jaxadv.from_apply(apply, make_params())


@pytest.fixture(scope="module")
def batch(model: Any) -> tuple[jax.Array, np.ndarray]:
    x = make_batch()
    return x, np.asarray(jaxadv.predict(model, x), np.int32)


# --- hyperparameters of the transfer family and of the compose parts -------------------

TRANSFER = ("mifgsm", "nifgsm", "vmifgsm", "tifgsm")


@pytest.mark.parametrize("name", TRANSFER)
@pytest.mark.parametrize("decay", [NAN, INF, -0.5])
def test_transfer_attacks_refuse_bad_decay(model: Any, batch: Any, name: str, decay: float) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="decay must be >= 0 and finite"):
        call(BY_NAME[name], model, x, y, decay=decay)


@pytest.mark.parametrize("name", TRANSFER)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(diversity_prob=1.5), r"diversity_prob must be in \[0, 1\]"),
        (dict(diversity_prob=-0.1), r"diversity_prob must be in \[0, 1\]"),
        (dict(diversity_prob=NAN), r"diversity_prob must be in \[0, 1\]"),
        (dict(diversity_prob=0.5, resize_rate=NAN), r"resize_rate must be in \(0, 1\]"),
        (dict(diversity_prob=0.0, resize_rate=NAN), r"resize_rate must be in \(0, 1\]"),
        (dict(diversity_prob=0.5, resize_rate=0.0), r"resize_rate must be in \(0, 1\]"),
    ],
)
def test_transfer_attacks_refuse_bad_input_diversity(
    model: Any, batch: Any, name: str, kwargs: dict[str, Any], message: str
) -> None:
    x, y = batch
    with pytest.raises(ValueError, match=message):
        call(BY_NAME[name], model, x, y, key=KEY, **kwargs)


@pytest.mark.parametrize("nsig", [NAN, INF, 0.0, -1.0])
def test_tifgsm_refuses_bad_nsig(model: Any, batch: Any, nsig: float) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="nsig must be a finite"):
        call(BY_NAME["tifgsm"], model, x, y, nsig=nsig)


@pytest.mark.parametrize("neighborhood", [NAN, INF, -1.0])
def test_vmifgsm_refuses_bad_neighborhood(model: Any, batch: Any, neighborhood: float) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="neighborhood must be >= 0 and finite"):
        call(BY_NAME["vmifgsm"], model, x, y, neighborhood=neighborhood)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: compose.momentum(NAN), "decay must be >= 0"),
        (lambda: compose.momentum(-1.0), "decay must be >= 0"),
        (lambda: compose.nesterov(INF), "decay must be >= 0"),
        (lambda: compose.variance_tuning(1.0, neighborhood=-1.0), "neighborhood must be >= 0"),
        (lambda: compose.variance_tuning(NAN), "decay must be >= 0"),
        (lambda: compose.input_diversity(prob=2.0), r"prob must be in \[0, 1\]"),
        (lambda: compose.input_diversity(resize_rate=NAN), r"resize_rate must be in \(0, 1\]"),
        (lambda: compose.translation_invariant(nsig=NAN), "nsig must be a finite"),
        (lambda: compose.translation_invariant(kernel=np.full((3, 3), np.nan)), "kernel must be finite"),
        (lambda: compose.gaussian_kernel_1d(5, INF), "nsig must be a finite"),
        (lambda: compose.finite_difference(scale=NAN), "scale must be > 0"),
        (lambda: compose.finite_difference(scale=0.0), "scale must be > 0"),
        (lambda: compose.diverse_inputs(KEY, jnp.zeros((2, 4, 4, 1)), prob=NAN), r"prob must be in \[0, 1\]"),
        (lambda: compose.Attack(step_factor=INF), "step_factor must be a finite"),
    ],
)
def test_compose_parts_refuse_bad_hyperparameters(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "rule",
    [
        compose.Momentum(jnp.float32(NAN)),
        compose.Nesterov(jnp.float32(INF)),
        compose.VarianceTuning(1.0, -2.0, 2),
    ],
)
def test_composed_attack_checks_parts_built_directly(model: Any, batch: Any, rule: Any) -> None:
    """A part built without its factory is checked when the attack runs: a NaN decay
    would otherwise return an all-NaN batch outside the box."""
    x, y = batch
    attack = compose.Attack(compose.loss_gradient(), rule)
    with pytest.raises(ValueError, match="must be >= 0 and finite"):
        attack(model, x, y, key=KEY, eps=0.05, steps=2)


def test_part_checks_run_under_checked_jit(model: Any, batch: Any) -> None:
    """Traced hyperparameters are checked through checkify inside ``jaxadv.checked``."""
    x, y = batch

    def run(decay: jax.Array) -> jax.Array:
        return jaxadv.mifgsm(model, x, y, eps=0.05, steps=1, decay=decay)

    err, _ = jax.jit(jaxadv.checked(run))(jnp.float32(NAN))
    with pytest.raises(ValueError, match="decay must be >= 0"):
        err.throw()


def test_eot_repr_names_its_field_as_its_argument() -> None:
    assert "num_samples=4" in repr(compose.eot(num_samples=4))
    assert "num_samples=3" in repr(compose.finite_difference(num_samples=3))
    assert "num_neighbors=2" in repr(compose.variance_tuning(num_neighbors=2))


# --- hyperparameters of the other attacks and tools ----------------------------------


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("apgd_targeted", dict(num_target_classes=CLASSES), "num_target_classes must be at most"),
        ("fab_targeted", dict(num_target_classes=CLASSES), "num_target_classes must be at most"),
        ("cw_l2", dict(confidence=INF), "confidence must be >= 0 and finite"),
        ("cw_l2", dict(initial_const=INF), "initial_const must be >= 0 and finite"),
        ("deepfool", dict(overshoot=INF), "overshoot must be >= 0 and finite"),
        ("ead", dict(l1_weight=INF), "l1_weight must be >= 0 and finite"),
        ("ead", dict(learning_rate=INF), "learning_rate must be >= 0 and finite"),
        ("fmn", dict(alpha_init=INF), "alpha_init must be >= 0 and finite"),
        ("fmn", dict(gamma_final=INF), "gamma_final must be >= 0 and finite"),
        ("fab", dict(eta=INF), "eta must be >= 0 and finite"),
        ("spsa", dict(fd_scale=INF), "fd_scale must be > 0 and finite"),
        ("nes", dict(fd_scale=0.0), "fd_scale must be > 0 and finite"),
        ("hop_skip_jump", dict(gamma=INF), "gamma must be a finite"),
    ],
)
def test_attacks_refuse_non_finite_hyperparameters(
    model: Any, batch: Any, name: str, kwargs: dict[str, Any], message: str
) -> None:
    x, y = batch
    with pytest.raises(ValueError, match=message):
        call(BY_NAME[name], model, x, y, **kwargs)


@pytest.mark.parametrize(
    "run, message",
    [
        (
            lambda f, x, y: training.trades_loss(
                f, x, y, key=KEY, eps=0.1, step_size=0.05, steps=1, beta=INF
            ),
            "beta must be >= 0 and finite",
        ),
        (
            lambda f, x, y: training.gaussian_augmentation_loss(f, x, y, key=KEY, sigma=INF),
            "sigma must be > 0",
        ),
        (
            lambda f, x, y: jaxadv.certify.smooth_certify(f, x, y, key=KEY, sigma=INF, n0=4, n=8, alpha=0.01),
            "sigma must be > 0",
        ),
        (
            lambda f, x, y: training.update_monitor(training.MonitorState(), 0.5, step=0, threshold=NAN),
            "threshold must be a fraction",
        ),
        (
            lambda f, x, y: evaluation.masking_checks(f, x, y, eps=0.1, norm="linf", key=KEY, tolerance=NAN),
            "tolerance must be a fraction",
        ),
        (
            lambda f, x, y: evaluation.accuracy_vs_eps(f, x, y, eps_values=[0.1, NAN], key=KEY, steps=1),
            "eps_values must be >= 0",
        ),
        (
            lambda f, x, y: jaxadv.evaluate(f, x, y, eps=NAN, key=KEY, suite="fast", progress=False),
            "eps must be",
        ),
    ],
)
def test_tools_refuse_non_finite_hyperparameters(model: Any, batch: Any, run: Any, message: str) -> None:
    x, y = batch
    with pytest.raises(ValueError, match=message):
        run(model, x, y)


# --- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_every_attack_refuses_soft_labels(model: Any, batch: Any, spec: Any) -> None:
    x, _ = batch
    soft = np.full((x.shape[0], CLASSES), 1.0 / CLASSES, np.float32)
    with pytest.raises(ValueError, match="must hold one-hot rows"):
        call(spec, model, x, soft)


def test_is_adversarial_refuses_soft_and_out_of_range_labels(model: Any, batch: Any) -> None:
    x, y = batch
    soft = np.full((x.shape[0], CLASSES), 1.0 / CLASSES, np.float32)
    with pytest.raises(ValueError, match="must hold one-hot rows"):
        jaxadv.is_adversarial(model, x, soft)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 4\)"):
        jaxadv.is_adversarial(model, x, np.full(x.shape[0], CLASSES, np.int32))
    # One-hot labels are the integer labels, and a clean batch is not adversarial.
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    assert not np.any(np.asarray(jaxadv.is_adversarial(model, x, onehot)))
    np.testing.assert_array_equal(jaxadv.is_adversarial(model, x, onehot), jaxadv.is_adversarial(model, x, y))


@pytest.mark.parametrize("name", ["apgd_targeted", "deepfool", "fab", "fab_targeted", "jsma"])
def test_one_hot_labels_work_where_they_were_refused(model: Any, batch: Any, name: str) -> None:
    """One-hot labels give exactly the integer labels' result."""
    x, y = batch
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    out_int = call(BY_NAME[name], model, x, y)
    out_hot = call(BY_NAME[name], model, x, onehot)
    np.testing.assert_array_equal(np.asarray(out_hot), np.asarray(out_int))


# --- keys ----------------------------------------------------------------------------


KEYED = [s for s in ATTACKS if s.keyed]


@pytest.mark.parametrize("spec", KEYED, ids=repr)
@pytest.mark.parametrize(
    "bad", [0, jax.random.split(KEY, 3), np.zeros(3, np.uint32)], ids=["int", "keys", "raw"]
)
def test_every_keyed_attack_refuses_a_non_key(model: Any, batch: Any, spec: Any, bad: Any) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="key must be one PRNG key"):
        call(spec, model, x, y, key=bad)


def test_a_raw_uint32_key_is_still_a_key(model: Any, batch: Any) -> None:
    x, y = batch
    out = jaxadv.pgd(model, x, y, key=jax.random.PRNGKey(0), eps=0.05, steps=1)
    assert out.shape == x.shape


@pytest.mark.parametrize(
    "run",
    [
        lambda f, x, y: training.pgd_at_loss(f, x, y, key=0, eps=0.1, step_size=0.05, steps=1),
        lambda f, x, y: training.trades_loss(f, x, y, key=0, eps=0.1, step_size=0.05, steps=1),
        lambda f, x, y: training.gaussian_augmentation_loss(f, x, y, key=0, sigma=0.1),
        lambda f, x, y: universal.universal_perturbation(f, [(x, y)], eps=0.1, key=0),
        lambda f, x, y: universal.adversarial_patch(f, [(x, y)], target=0, size=2, key=0),
        lambda f, x, y: jaxadv.certify.smooth_certify(f, x, y, key=0, sigma=0.1, n0=4, n=8, alpha=0.01),
    ],
)
def test_key_taking_tools_refuse_a_non_key(model: Any, batch: Any, run: Any) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="key must be one PRNG key"):
        run(model, x, y)


def test_adversarial_patch_needs_a_key(model: Any, batch: Any) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="key is required"):
        universal.adversarial_patch(model, [(x, y)], target=0, size=2, key=None)


# --- empty data -----------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["pgd", "fast", "trades"])
def test_training_losses_refuse_an_empty_batch(model: Any, batch: Any, loss: str) -> None:
    x, y = batch
    fn = {"pgd": training.pgd_at_loss, "fast": training.fast_at_loss, "trades": training.trades_loss}[loss]
    kwargs: dict[str, Any] = dict(key=KEY, eps=0.1)
    if loss != "fast":
        kwargs.update(step_size=0.05, steps=1)
    with pytest.raises(ValueError, match="at least one example"):
        fn(model, x[:0], y[:0], **kwargs)


def test_evaluate_refuses_zero_examples(model: Any, batch: Any) -> None:
    x, y = batch
    run = dict(eps=0.05, key=KEY, suite=["fgsm"], progress=False, checks=False)
    with pytest.raises(ValueError, match="no examples"):
        jaxadv.evaluate(model, x[:0], y[:0], **run)
    with pytest.raises(ValueError, match="no examples"):
        jaxadv.evaluate(model, iter([]), **run)


# --- the zoo ------------------------------------------------------------------------------


def test_from_torch_refuses_an_architecture_that_is_not_a_name() -> None:
    from jaxadv import zoo

    with pytest.raises(ValueError, match="the architecture must be a name"):
        zoo.from_torch(None, {})  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""], ids=["garbage", "empty"])
def test_from_torch_names_a_file_it_cannot_read(tmp_path: Any, content: bytes) -> None:
    pytest.importorskip("torch")
    from jaxadv import zoo

    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        zoo.from_torch("wrn-10-1", str(path))
    text = str(info.value)
    assert str(path) in text
    assert "weights_only=False" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- half precision at the bounds --------------------------------------------------------


@pytest.mark.parametrize("hi", [0.3, 0.7])
def test_float16_data_rounded_from_inside_the_bounds_is_accepted(model: Any, hi: float) -> None:
    """``float16(0.3) = 0.30005 > 0.3``: the data was inside ``(0, 0.3)`` before the
    rounding, so it is accepted; the result lies in the rounded box."""
    x = np.full((2, 8, 8, 1), hi, np.float32)
    x[:, 0] = 0.0
    x16 = x.astype(np.float16)
    assert float(x16.max()) > hi  # the premise: rounding moved it out
    out = jaxadv.fgsm(model, x16, np.zeros(2, np.int32), eps=0.05, bounds=(0.0, hi))
    assert out.dtype == jnp.float16
    assert float(jnp.max(out.astype(jnp.float32))) <= float(np.float16(hi))


def test_float16_data_beyond_the_rounded_bounds_is_still_refused(model: Any) -> None:
    x16 = np.full((2, 8, 8, 1), 0.31, np.float16)
    assert float(x16.max()) > float(np.float16(0.3))
    with pytest.raises(ValueError, match="x must lie inside bounds"):
        jaxadv.fgsm(model, x16, np.zeros(2, np.int32), eps=0.05, bounds=(0.0, 0.3))


def test_float32_keeps_its_tight_bounds(model: Any) -> None:
    x = np.full((2, 8, 8, 1), np.nextafter(np.float32(0.3), np.float32(1.0)) + 1e-6, np.float32)
    assert not math.isclose(float(x.max()), 0.3, abs_tol=1e-7)
    with pytest.raises(ValueError, match="x must lie inside bounds"):
        jaxadv.fgsm(model, x, np.zeros(2, np.int32), eps=0.05, bounds=(0.0, 0.3))
