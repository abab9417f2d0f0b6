"""FMN against Foolbox 3.3.4's implementation, on the digits CNN and its PyTorch twin.

Both attacks run the same number of steps with their default hyperparameters
on the same correctly classified test digits. Per norm: our attack must fool
every example Foolbox fools, and on the examples both fool our median minimal
norm must be at most 5% above Foolbox's (L0: the mean number of changed pixels,
the median of small counts being too coarse).

Two differences in the reference explain why ours is often smaller:

* Foolbox's ``L2FMNAttack.project`` scales by ``min(1, norms / norms) = 1``, so
  its L2 attack never projects onto the ball: it is L2-normalised gradient
  descent that keeps the smallest adversarial iterate. (With the projection
  restored, as in the paper's code, it fools about a quarter of these digits
  in 100 steps.)
* Its L1 attack (ball projection, then the box) stalls against the box on
  about 30% of these digits and returns them unchanged; ours zeroes the
  gradient coordinates blocked by the box and projects onto the L1 ball and the
  box exactly (see :mod:`jaxadv.attacks.fmn`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.attacks.fmn import fmn

pytestmark = [pytest.mark.slow, pytest.mark.crosscheck, pytest.mark.full_optimization]

N, STEPS = 100, 100


@pytest.fixture(scope="module")
def setup(cnn: Any, digits: Any) -> Any:
    torch = pytest.importorskip("torch")
    fb = pytest.importorskip("foolbox")
    from torch_models import TorchDigitsCNN, max_logit_gap

    torch.set_num_threads(1)
    twin = TorchDigitsCNN(cnn.variables).eval()
    x, y = digits[1].x[:N], digits[1].y[:N]
    assert max_logit_gap(twin, cnn.logits_fn, x) < 1e-4
    right = np.asarray(jaxadv.predict(cnn.logits_fn, x)) == y
    return fb.PyTorchModel(twin, bounds=(0, 1)), x[right], y[right]


def _size(adv: Any, x: np.ndarray, norm: str) -> np.ndarray:
    if norm == "l0":
        return np.sum(np.asarray(adv).reshape(len(x), -1) != x.reshape(len(x), -1), axis=1).astype(float)
    return np.asarray(jaxadv.norm_of(jnp.asarray(adv) - x, norm))


@pytest.mark.parametrize("norm", ["l2", "linf", "l1", "l0"])
@pytest.mark.filterwarnings("ignore::Warning")
def test_minimal_norms_no_larger_than_foolbox(setup: Any, cnn: Any, norm: str) -> None:
    import foolbox as fb
    import torch
    from torch_models import to_nchw, to_nhwc

    fmodel, x, y = setup
    attack = {
        "l0": fb.attacks.L0FMNAttack,
        "l1": fb.attacks.L1FMNAttack,
        "l2": fb.attacks.L2FMNAttack,
        "linf": fb.attacks.LInfFMNAttack,
    }[norm](steps=STEPS)
    raw, _, _ = attack(fmodel, to_nchw(x), torch.from_numpy(y.astype(np.int64)), epsilons=None)
    ref = to_nhwc(raw)
    ref_ok = np.asarray(jaxadv.is_adversarial(cnn.logits_fn, ref, y))
    res = fmn(cnn.logits_fn, x, y, norm=norm, steps=STEPS, return_info=True)
    ok = np.asarray(res.success)
    assert bool(jnp.all((res.x_adv >= 0) & (res.x_adv <= 1)))
    assert np.all(ok[ref_ok]), f"{norm}: Foolbox fools examples we do not"
    both = ok & ref_ok
    assert both.sum() >= 0.6 * len(x)
    ours, theirs = _size(res.x_adv, x, norm)[both], _size(ref, x, norm)[both]
    stat = np.mean if norm == "l0" else np.median
    assert stat(ours) <= 1.05 * stat(theirs), (norm, stat(ours), stat(theirs), ok.mean(), ref_ok.mean())
