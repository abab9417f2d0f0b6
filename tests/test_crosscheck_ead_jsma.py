"""EAD and JSMA against torchattacks' ``EADL1``/``EADEN`` and ``JSMA`` on the digits CNN.

The CNN's weights are copied into its PyTorch twin (``tests/torch_models.py``);
both implementations attack the same examples with the same settings. At equal
success (no more than 2 points below the reference's success rate), the median
size of the perturbations, over the examples both attacks fool, must be no
worse than the reference's by more than 5%: the L1 norm for EAD, the number of
changed features (L0) for JSMA.

Differences of the references that the settings neutralise: torchattacks' early
abort of a search step is turned off (``abort_early=False``; ours has none), and
``gamma`` is chosen so that ``gamma * n / 2`` is an integer (torchattacks rounds
the number of steps up, the paper and ours down). One difference stays:
torchattacks' EAD continues each search step from the previous one's iterate,
ours restarts from ``x`` as the paper does. With ``theta = 1`` the JSMA
outputs must moreover coincide with the reference's on at least 90% of the examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import jaxadv
from jaxadv.attacks.ead import ead
from jaxadv.attacks.jsma import jsma

pytestmark = [pytest.mark.slow, pytest.mark.crosscheck, pytest.mark.full_optimization]

N = 100
EAD_SETTINGS = dict(l1_weight=1e-3, learning_rate=1e-2, steps=100, binary_search_steps=9, initial_const=1e-3)
JSMA_GAMMA = 0.25  # 64 features: 8 steps, at most 16 features changed


@pytest.fixture(scope="module")
def twin(cnn: Any, digits: Any) -> Any:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchattacks")
    from torch_models import TorchDigitsCNN, max_logit_gap

    torch.set_num_threads(1)
    model = TorchDigitsCNN(cnn.variables).eval()
    assert max_logit_gap(model, cnn.logits_fn, digits[1].x[:N]) < 1e-4
    return model


def _data(cnn: Any, digits: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = digits[1].x[:N], digits[1].y[:N]
    keep = np.asarray(jaxadv.predict(cnn.logits_fn, x)) == y  # attack correctly classified examples
    return x[keep], y[keep].astype(np.int32)


def _reference(attack: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    import torch
    from torch_models import to_nchw, to_nhwc

    return to_nhwc(attack(to_nchw(x), torch.from_numpy(y.astype(np.int64))))


def _compare(
    cnn: Any, x: np.ndarray, y: np.ndarray, ours: np.ndarray, ref: np.ndarray, size: Any, targeted: bool
) -> tuple[float, float, float, float]:
    ok_ours = np.asarray(jaxadv.is_adversarial(cnn.logits_fn, ours, y, targeted=targeted))
    ok_ref = np.asarray(jaxadv.is_adversarial(cnn.logits_fn, ref, y, targeted=targeted))
    both = ok_ours & ok_ref
    assert both.sum() >= len(x) // 2
    m_ours = float(np.median(size(ours - x)[both]))
    m_ref = float(np.median(size(ref - x)[both]))
    return float(ok_ours.mean()), float(ok_ref.mean()), m_ours, m_ref


def _l1(d: np.ndarray) -> np.ndarray:
    return np.abs(d.reshape(len(d), -1)).sum(1)


def _l0(d: np.ndarray) -> np.ndarray:
    return (d.reshape(len(d), -1) != 0).sum(1)


@pytest.mark.parametrize("rule", ["l1", "en"])
@pytest.mark.filterwarnings("ignore::Warning")
def test_ead_matches_torchattacks(twin: Any, cnn: Any, digits: Any, rule: str) -> None:
    import torchattacks

    x, y = _data(cnn, digits)
    s = EAD_SETTINGS
    cls = torchattacks.EADL1 if rule == "l1" else torchattacks.EADEN
    attack = cls(
        twin,
        kappa=0.0,
        lr=s["learning_rate"],
        binary_search_steps=s["binary_search_steps"],
        max_iterations=s["steps"],
        abort_early=False,
        initial_const=s["initial_const"],
        beta=s["l1_weight"],
    )
    ref = _reference(attack, x, y)
    ours = np.asarray(ead(cnn.logits_fn, x, y, decision_rule=rule, **s))  # type: ignore[arg-type]
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    acc_ours, acc_ref, m_ours, m_ref = _compare(cnn, x, y, ours, ref, _l1, targeted=False)
    print(f"EAD {rule}: success {acc_ours:.3f} vs {acc_ref:.3f}, median L1 {m_ours:.4f} vs {m_ref:.4f}")
    assert acc_ours >= acc_ref - 0.02, (acc_ours, acc_ref)
    assert m_ours <= 1.05 * m_ref, (m_ours, m_ref)


@pytest.mark.filterwarnings("ignore::Warning")
def test_jsma_matches_torchattacks(twin: Any, cnn: Any, digits: Any) -> None:
    import torchattacks

    x, y = _data(cnn, digits)
    targets = ((y + 1 + np.arange(len(y)) % 9) % 10).astype(np.int32)
    attack = torchattacks.JSMA(twin, theta=1.0, gamma=JSMA_GAMMA)
    attack.set_mode_targeted_by_label(quiet=True)
    ref = _reference(attack, x, targets)
    ours = np.asarray(jsma(cnn.logits_fn, x, targets, targeted=True, theta=1.0, gamma=JSMA_GAMMA))
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    assert np.all(_l0(ours - x) <= 2 * int(JSMA_GAMMA * 64 / 2))
    # With theta = 1 both pick the same pairs (up to float ties in the saliency).
    same = np.all(np.abs(ours - ref).reshape(len(x), -1) < 1e-6, axis=1)
    assert same.mean() >= 0.9, same.mean()
    acc_ours, acc_ref, m_ours, m_ref = _compare(cnn, x, targets, ours, ref, _l0, targeted=True)
    print(f"JSMA: success {acc_ours:.3f} vs {acc_ref:.3f}, median L0 {m_ours:.1f} vs {m_ref:.1f}")
    assert acc_ours >= acc_ref - 0.02, (acc_ours, acc_ref)
    assert m_ours <= 1.05 * m_ref, (m_ours, m_ref)
