"""The standard suite against AutoAttack's standard evaluation on the same weights.

The digits CNN's weights are copied into an equivalent PyTorch model
(``tests/torch_models.py``); pyautoattack runs its standard version (APGD-CE,
APGD-T, FAB-T, Square) and jaxadv its standard suite (APGD-CE, APGD-T,
Square). Robust accuracies must agree within 1 percentage point, and the
suite must be no weaker than any of its members alone.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

import jaxadv

pytestmark = pytest.mark.crosscheck

N, EPS = 100, 0.1


def test_standard_suite_matches_autoattack(cnn: Any, digits: Any) -> None:
    torch = pytest.importorskip("torch")
    pyautoattack = pytest.importorskip("pyautoattack")
    from torch_models import TorchDigitsCNN, max_logit_gap, to_nchw

    torch.set_num_threads(1)
    x, y = digits[1].x[:N], digits[1].y[:N]
    model = TorchDigitsCNN(cnn.variables).eval()
    assert max_logit_gap(model, cnn.logits_fn, x) < 1e-4

    aa = pyautoattack.AutoAttack(model, norm="Linf", eps=EPS, version="standard", device="cpu", seed=0)
    aa.verbose = False
    out = aa.run_standard_evaluation(to_nchw(x), torch.from_numpy(y.astype(np.int64)), batch_size=N)
    x_ref = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        reference = float(np.mean(model(x_ref).argmax(1).numpy() == y))

    kw: dict[str, Any] = dict(eps=EPS, key=jax.random.key(0), progress=False, checks=False)
    ours = jaxadv.evaluate(cnn.logits_fn, x, y, suite="standard", **kw)
    assert abs(ours.robust_accuracy - reference) <= 0.01 + 1e-9, (ours.robust_accuracy, reference)

    for member in ("apgd-ce", "apgd-t", "square"):
        alone = jaxadv.evaluate(cnn.logits_fn, x, y, suite=[member], **kw)
        assert ours.robust_accuracy <= alone.robust_accuracy, member
