"""Transfer attacks: ensembles, success-rate bookkeeping, digits surrogate -> independent target."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv


def _model(seed: int) -> Any:
    return sm.model(sm.random_weights(seed))


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(8, 8, 8, 1)).astype(np.float32)


def test_ensemble_logits() -> None:
    f, g = _model(0), _model(1)
    x = jnp.asarray(_images(0))
    np.testing.assert_allclose(
        np.asarray(jaxadv.ensemble_logits(f, g)(x)), (np.asarray(f(x)) + np.asarray(g(x))) / 2, rtol=1e-6
    )
    probs = jaxadv.ensemble_logits(f, g, mode="probs")(x)
    want = (jax.nn.softmax(f(x)) + jax.nn.softmax(g(x))) / 2
    np.testing.assert_allclose(np.asarray(jnp.exp(probs)), np.asarray(want), rtol=1e-5)
    # A pytree whose leaves are the members' parameters: attacks trace them.
    assert len(jax.tree_util.tree_leaves(jaxadv.ensemble_logits(f, g))) == 4
    x_adv = jaxadv.pgd(jaxadv.ensemble_logits(f, g), x, key=jax.random.key(0), eps=0.1, steps=3)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    with pytest.raises(ValueError):
        jaxadv.ensemble_logits()


def test_transfer_bookkeeping() -> None:
    f, g = _model(0), _model(1)
    x = _images(1)
    y = np.asarray(jaxadv.predict(f, x))
    # Surrogate == target: the transfer rate is the white-box rate.
    r = jaxadv.transfer(jaxadv.bim, f, f, x, y, eps=0.1, steps=5)
    assert float(r.success_rate) == float(r.surrogate_success_rate)
    # Any target: success is exactly "the target is fooled by x_adv".
    r = jaxadv.transfer(jaxadv.bim, f, g, x, y, eps=0.1, steps=5)
    np.testing.assert_array_equal(np.asarray(r.success), np.asarray(jaxadv.predict(g, r.x_adv)) != y)
    clean_fooled = np.asarray(jaxadv.predict(g, x)) != y
    np.testing.assert_array_equal(np.asarray(r.clean_fooled), clean_fooled)
    want = np.asarray(r.success)[~clean_fooled].mean() if (~clean_fooled).any() else np.nan
    np.testing.assert_allclose(float(r.success_rate), want)
    np.testing.assert_array_equal(np.asarray(r.x_adv), np.asarray(jaxadv.bim(f, x, y, eps=0.1, steps=5)))
    # A black-box target (no gradient) and a black-box crafting attack both work.
    black_box = jaxadv.from_callable(lambda a: np.asarray(g(jnp.asarray(a))), num_classes=4)
    rb = jaxadv.transfer(jaxadv.bim, [f, _model(2)], black_box, x, y, eps=0.1, steps=5)
    assert rb.x_adv.shape == x.shape
    rs = jaxadv.transfer(jaxadv.square, f, g, x, y, key=jax.random.key(0), eps=0.1, queries=10)
    assert rs.x_adv.shape == x.shape
    with pytest.raises(ValueError, match="y"):
        jaxadv.transfer(jaxadv.bim, f, g, x, None, eps=0.1)  # type: ignore[arg-type]


# Slow tier: a strength comparison between two digits CNNs.
@pytest.mark.slow
def test_transfer_digits(cnn: Any, cnn_b: Any, mlp: Any, digits: Any) -> None:
    """Examples crafted on one CNN fool an independently trained CNN (rates printed with -s)."""
    x, y = digits[1].x[:128], digits[1].y[:128]
    eps = 0.2
    rates = {}
    attacks = {
        "fgsm": (jaxadv.fgsm, {}),
        "bim": (jaxadv.bim, {"steps": 10, "step_size": eps / 10}),
        "pgd": (jaxadv.pgd, {"steps": 10, "key": jax.random.key(0)}),
        "mifgsm": (jaxadv.mifgsm, {"steps": 10}),
        "di-mifgsm": (jaxadv.mifgsm, {"steps": 10, "diversity_prob": 0.5, "key": jax.random.key(0)}),
    }
    for name, (attack, kw) in attacks.items():
        r = jaxadv.transfer(attack, cnn.logits_fn, cnn_b.logits_fn, x, y, eps=eps, **kw)
        rates[name] = (float(r.success_rate), float(r.surrogate_success_rate))
    ens = jaxadv.transfer(
        jaxadv.bim, [cnn.logits_fn, mlp.logits_fn], cnn_b.logits_fn, x, y, eps=eps, steps=10
    )
    rates["bim-ensemble(cnn+mlp)"] = (float(ens.success_rate), float(ens.surrogate_success_rate))
    targets = (y + 1) % 10
    tgt = jaxadv.transfer(
        jaxadv.bim, cnn.logits_fn, cnn_b.logits_fn, x, targets, targeted=True, eps=eps, steps=10
    )
    rates["bim-targeted"] = (float(tgt.success_rate), float(tgt.surrogate_success_rate))
    print("transfer rates (target cnn_b, surrogate white-box):", rates)
    # Transfer is real: far above the target's clean error, and most of the white-box rate.
    for name, (transfer_rate, white_box) in rates.items():
        assert transfer_rate > 0.5 * white_box, name
    assert rates["bim"][0] > 0.6
    assert rates["bim-targeted"][0] > 0.2
