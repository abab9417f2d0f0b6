"""Square Attack against AutoAttack's reference implementation (pyautoattack, PyTorch CPU)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.attacks.square import _eta, _inverse_squares

pytestmark = [pytest.mark.slow, pytest.mark.crosscheck]


@pytest.mark.parametrize("s", [1, 3, 5, 7])
def test_l2_pattern_matches_reference(s: int) -> None:
    pytest.importorskip("torch")
    square = pytest.importorskip("pyautoattack.square")
    ref = square.SquareAttack(lambda t: t, norm="L2", eps=1.0, device="cpu")
    want = ref.eta(s).numpy()
    r, c = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    ours = np.asarray(
        _eta(
            jnp.asarray(r)[None],
            jnp.asarray(c)[None],
            jnp.asarray(s),
            jnp.zeros((1, 1, 1), bool),
            _inverse_squares(9),
        )
    )[0]
    # The reference transposes at random; compare with the orientation it drew.
    match = np.allclose(ours, want, atol=1e-6) or np.allclose(ours.T, want, atol=1e-6)
    assert match, (ours, want)
    np.testing.assert_allclose(np.sum(ours**2), 1.0, rtol=1e-5)


def test_square_linf_matches_reference_robust_accuracy(cnn: Any, digits: Any) -> None:
    torch = pytest.importorskip("torch")
    square = pytest.importorskip("pyautoattack.square")
    from torch_models import TorchDigitsCNN, max_logit_gap, to_nchw

    x, y = digits[1].x, digits[1].y
    net = TorchDigitsCNN(cnn.variables).eval()
    assert max_logit_gap(net, cnn.logits_fn, x[:64]) < 1e-3
    eps, budget = 0.1, 1000
    reference = square.SquareAttack(
        net, norm="Linf", n_queries=budget, eps=eps, p_init=0.8, seed=0, device="cpu"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only contend with other work
    try:
        with torch.no_grad():
            x_ref = reference.perturb(to_nchw(x), torch.from_numpy(y).long())
            ref_acc = float((net(x_ref).argmax(1).numpy() == y).mean())
    finally:
        torch.set_num_threads(threads)
    ours = jaxadv.square(
        cnn.logits_fn, x, y, key=jax.random.key(0), eps=eps, queries=budget, return_info=True
    )
    our_acc = 1.0 - float(np.mean(np.asarray(ours.success)))
    print(
        f"Square L-inf eps={eps}, {budget} queries: robust acc. ours {our_acc:.3f}, reference {ref_acc:.3f}"
    )
    assert abs(our_acc - ref_acc) <= 0.03
    clean = float(np.mean(np.asarray(jaxadv.predict(cnn.logits_fn, x)) == y))
    assert our_acc < clean - 0.2
