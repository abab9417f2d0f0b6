"""from_callable: non-JAX models (NumPy, scikit-learn, PyTorch) as black boxes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv

_W = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32) / 8.0


def _scores(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1) @ _W


def _images(seed: int, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 8, 8, 1)).astype(np.float32)


def test_from_callable_outputs_jit_vmap() -> None:
    model = jaxadv.from_callable(_scores, num_classes=4)
    x = _images(0)
    np.testing.assert_allclose(np.asarray(model(x)), _scores(x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(model)(x)), _scores(x), rtol=1e-6)
    xs = np.stack([x, _images(1)])
    np.testing.assert_allclose(np.asarray(jax.vmap(model)(xs)), np.stack([_scores(a) for a in xs]), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(jaxadv.predict(model, x)), _scores(x).argmax(1))
    assert model(x).dtype == jnp.float32


def test_from_callable_batches_calls() -> None:
    sizes: list[int] = []

    def counting(a: np.ndarray) -> np.ndarray:
        sizes.append(a.shape[0])
        return _scores(a)

    model = jaxadv.from_callable(counting, num_classes=4, batch_size=4)
    out = jax.jit(model)(_images(0, n=10))
    np.testing.assert_allclose(np.asarray(out), _scores(_images(0, n=10)), rtol=1e-6)
    assert sizes == [4, 4, 2]


def test_from_callable_labels() -> None:
    model = jaxadv.from_callable(lambda a: _scores(a).argmax(1), num_classes=4, returns="labels")
    x = _images(2)
    np.testing.assert_array_equal(np.asarray(model(x)), np.eye(4, dtype=np.float32)[_scores(x).argmax(1)])


def test_from_callable_has_no_gradient() -> None:
    model = jaxadv.from_callable(_scores, num_classes=4)
    x = jnp.asarray(_images(0))
    with pytest.raises(jaxadv.GradientNotAvailableError, match="black box"):
        jax.grad(lambda a: model(a).sum())(x)
    with pytest.raises(jaxadv.GradientNotAvailableError):
        jaxadv.pgd(model, x, key=jax.random.key(0), eps=0.1, steps=2)


def test_from_callable_errors_surface_cleanly() -> None:
    calls = {"n": 0}

    def flaky(a: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 3:  # the endpoint fails in the middle of the attack loop
            raise ConnectionError("endpoint unreachable")
        return _scores(a)

    model = jaxadv.from_callable(flaky, num_classes=4)
    with pytest.raises(jaxadv.CallableError, match="endpoint unreachable") as info:
        jaxadv.square(model, _images(0), key=jax.random.key(0), eps=0.1, queries=30)
    assert isinstance(info.value.__cause__, ConnectionError)

    bad_shape = jaxadv.from_callable(lambda a: np.zeros((a.shape[0], 3), np.float32), num_classes=4)
    with pytest.raises(jaxadv.CallableError, match="shape"):
        jaxadv.hop_skip_jump(
            bad_shape, _images(0), jnp.zeros(6, jnp.int32), key=jax.random.key(0), queries=20
        )
    with pytest.raises(ValueError, match="returns"):
        jaxadv.from_callable(_scores, num_classes=4, returns="probabilities")  # type: ignore[arg-type]


# Slow tier: host callbacks for every query of a full attack.
@pytest.mark.slow
def test_sklearn_end_to_end(digits: Any) -> None:
    """Square and HopSkipJump against a scikit-learn logistic regression on the digits."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    train, test = digits
    clf = linear_model.LogisticRegression(max_iter=500).fit(train.x.reshape(len(train.x), -1), train.y)

    def predict_proba(a: np.ndarray) -> np.ndarray:
        return clf.predict_proba(a.reshape(a.shape[0], -1))

    model = jaxadv.from_callable(predict_proba, num_classes=10)
    x, y = test.x[:24], test.y[:24]
    clean = float(np.mean(clf.predict(x.reshape(24, -1)) == y))
    assert clean > 0.85

    r = jaxadv.square(model, x, y, key=jax.random.key(0), eps=0.15, queries=300, return_info=True)
    assert np.all(np.asarray(r.queries) <= 300)
    assert np.all(np.asarray(jaxadv.norm_of(r.x_adv - x, "linf")) <= 0.15 + 1e-5)
    fooled = clf.predict(np.asarray(r.x_adv).reshape(24, -1)) != y
    np.testing.assert_array_equal(np.asarray(r.success), fooled)
    assert 1.0 - fooled.mean() < clean - 0.3

    labels_only = jaxadv.from_callable(
        lambda a: clf.predict(a.reshape(a.shape[0], -1)), num_classes=10, returns="labels"
    )
    h = jaxadv.hop_skip_jump(
        labels_only, x, y, key=jax.random.key(0), queries=400, norm="l2", steps=4, return_info=True
    )
    assert np.all(np.asarray(h.queries) <= 400)
    success = np.asarray(h.success)
    assert success.mean() > 0.9
    np.testing.assert_array_equal(success, clf.predict(np.asarray(h.x_adv).reshape(24, -1)) != y)
    assert float(np.median(np.asarray(jaxadv.norm_of(h.x_adv - x, "l2"))[success])) < 2.0


@pytest.mark.slow
@pytest.mark.crosscheck
def test_torch_model_through_from_callable(cnn: Any, digits: Any) -> None:
    torch = pytest.importorskip("torch")
    from torch_models import TorchDigitsCNN, to_nchw

    net = TorchDigitsCNN(cnn.variables).eval()

    def scores(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(to_nchw(a)).numpy()

    model = jaxadv.from_callable(scores, num_classes=10)
    x, y = digits[1].x[:16], digits[1].y[:16]
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(jaxadv.logits(cnn.logits_fn, x)), atol=1e-4)
    r = jaxadv.square(model, x, y, key=jax.random.key(0), eps=0.15, queries=200, return_info=True)
    assert np.all(np.asarray(r.queries) <= 200)
    assert float(np.mean(np.asarray(r.success))) > 0.3
