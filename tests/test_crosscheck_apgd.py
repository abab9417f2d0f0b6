"""APGD-CE, APGD-DLR and APGD-T against AutoAttack's reference implementation.

The digits CNN's weights are copied into an equivalent PyTorch model
(``tests/torch_models.py``); both attacks run on the same examples with the same
budget. Our robust accuracy must be within 1 percentage point of the
reference's and never meaningfully higher (weaker attack). Ours is averaged over
two keys to damp random-start noise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv

pytestmark = [pytest.mark.slow, pytest.mark.crosscheck, pytest.mark.full_optimization]

N, STEPS = 300, 30


@pytest.fixture(scope="module")
def twin(cnn: Any, digits: Any) -> Any:
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyautoattack")
    from torch_models import TorchDigitsCNN, max_logit_gap

    torch.set_num_threads(1)
    model = TorchDigitsCNN(cnn.variables).eval()
    assert max_logit_gap(model, cnn.logits_fn, digits[1].x) < 1e-4
    return model


def _reference_accuracy(
    model: Any, x: np.ndarray, y: np.ndarray, eps: float, targeted: bool, loss: str
) -> float:
    import torch
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from torch_models import to_nchw

    xt, yt = to_nchw(x), torch.from_numpy(y.astype(np.int64))
    if targeted:
        attack = APGDAttack_targeted(model, n_iter=STEPS, norm="Linf", eps=eps, seed=0, device="cpu")
    else:
        attack = APGDAttack(model, n_iter=STEPS, norm="Linf", eps=eps, loss=loss, seed=0, device="cpu")
    adv = attack.perturb(xt, yt)
    assert float((adv - xt).abs().max()) <= eps + 1e-6
    with torch.no_grad():
        return float((model(adv).argmax(1) == yt).float().mean())


@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-dlr", "apgd-t"])
@pytest.mark.filterwarnings("ignore::Warning")
def test_robust_accuracy_matches_autoattack(twin: Any, cnn: Any, digits: Any, attack: str) -> None:
    x, y = digits[1].x[:N], digits[1].y[:N]
    eps = 0.1
    ref = _reference_accuracy(twin, x, y, eps, attack == "apgd-t", "dlr" if attack == "apgd-dlr" else "ce")
    accs = []
    for seed in range(2):
        kw = dict(key=jax.random.key(seed), eps=eps, steps=STEPS)
        if attack == "apgd-t":
            adv = jaxadv.apgd_targeted(cnn.logits_fn, x, y, **kw)
        else:
            adv = jaxadv.apgd(cnn.logits_fn, x, y, loss=attack.split("-")[1], **kw)
        assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
        accs.append(float(jnp.mean(jaxadv.predict(cnn.logits_fn, adv) == y)))
    ours = float(np.mean(accs))
    assert abs(ours - ref) <= 0.01 + 1e-9, (attack, ours, ref)
    assert ours <= ref + 0.005, (attack, ours, ref)
