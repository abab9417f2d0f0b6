"""NI/VMI/TI/DI-FGSM and EOT-PGD against torchattacks 3.5.1, on the same weights.

The digits CNN's weights are copied into its PyTorch twin (``tests/torch_models.py``)
and both libraries attack the 397 test digits with the same hyperparameters
(``eps``, ``alpha``, ``steps``, decay, neighbours, kernel, diversity). Each
reference's source was read to line the two up:

* NI-FGSM, TI-FGSM without input diversity, and DI-FGSM with a transform
  applied every step are deterministic: the adversarial examples themselves
  are compared. They agree to 1e-5 on 90-100% of the examples and 99.4-99.8%
  of the coordinates; the rest part where the two libraries' float32 gradients
  have opposite signs (entries within rounding of zero: a confident example's
  whole cross-entropy gradient is tiny), which decides a sign step, after which
  the trajectories differ. After one step every differing coordinate is such a
  sign disagreement.
* VMI-FGSM (random neighbours), DI-FGSM and TI-FGSM (random transforms) and
  EOT-PGD (dropout masks) are compared by robust accuracy, averaged over seeds
  on both sides: ours may be at most 0.5 points above theirs (measured: DI-FGSM
  75.7% vs 76.6%, TI-DI-FGSM 78.5% vs 78.7%).
* EOT on a model with dropout left on: EOT-PGD with 8 draws per step must
  reach a robust accuracy (of the model's expected softmax) at least 3 points
  below PGD's with one draw per step, same steps and step size (measured: about
  7 points).

torchattacks' TI convolution is hard-coded for three channels (``groups=3``):
its model sees the first channel of a three-channel copy of the digits, so the
attack's channel 0 is the one-channel attack (the other two get no gradient and
never move).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv import compose

pytestmark = [
    pytest.mark.slow,
    pytest.mark.crosscheck,
    pytest.mark.full_optimization,
    pytest.mark.filterwarnings("ignore::Warning"),
]

EPS, ALPHA, STEPS = 0.1, 0.01, 10
OURS: dict[str, Any] = dict(eps=EPS, step_size=ALPHA, steps=STEPS)
THEIRS: dict[str, Any] = dict(eps=EPS, alpha=ALPHA, steps=STEPS)
TI: dict[str, Any] = dict(len_kernel=5, nsig=3)
DI: dict[str, Any] = dict(diversity_prob=0.5, resize_rate=0.9)
SEEDS = (0, 1, 2)
# Both input diversities shrink bilinearly; ours draws the size and the offset
# per example, torchattacks' one size (7x7 for 8x8 inputs) at the top-left
# corner per batch: averaged over seeds, the robust accuracies agree, and ours
# may be at most the 0.5 points above.
DI_ALLOWANCE = 0.005
# Dropout left on at inference, on the CNN's 256 penultimate features.
DROPOUT = 0.8
EOT_SAMPLES = 8
EOT_EPS = 0.1


@pytest.fixture(scope="module")
def setup(cnn: Any, digits: Any) -> Any:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchattacks")
    from torch_models import TorchDigitsCNN, max_logit_gap, to_nchw

    torch.set_num_threads(1)
    twin = TorchDigitsCNN(cnn.variables).eval()
    x, y = digits[1].x, digits[1].y
    assert max_logit_gap(twin, cnn.logits_fn, x) < 1e-4
    return twin, x, y, to_nchw(x), torch.from_numpy(y.astype(np.int64))


def _theirs(attack: Any, x_nchw: Any, labels: Any, seed: int = 0, chunk: int | None = None) -> np.ndarray:
    """The reference's adversarial batch (NHWC). ``chunk``: attack mini-batches of
    that size, so that a one-draw-per-batch transform averages over many draws."""
    import torch
    from torch_models import to_nhwc

    torch.manual_seed(seed)
    if chunk is None:
        return to_nhwc(attack(x_nchw, labels))
    parts = [attack(x_nchw[i : i + chunk], labels[i : i + chunk]) for i in range(0, len(labels), chunk)]
    return to_nhwc(torch.cat(parts))


def _accuracy(logits_fn: Any, x_adv: Any, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(jaxadv.predict(logits_fn, jnp.asarray(x_adv))) == y))


def _compare_examples(ours: Any, theirs: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Fractions of examples, and of coordinates, on which the two batches agree."""
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape == x.shape
    for adv in (ours, theirs):
        assert np.max(np.abs(adv - x)) <= EPS + 1e-6
    gap = np.abs(ours - theirs).reshape(len(x), -1)
    return float(np.mean(gap.max(axis=1) <= 1e-5)), float(np.mean(gap <= 1e-5))


def _first_channel(model: Any) -> Any:
    """``model`` reading the first channel of a three-channel batch (for TI-FGSM)."""
    import torch

    class FirstChannel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: Any) -> Any:
            return self.model(images[:, :1])

    return FirstChannel()


def test_nifgsm_matches_example_by_example(setup: Any, cnn: Any) -> None:
    import torch
    import torchattacks
    from torch_models import to_nhwc

    twin, x, y, xt, yt = setup
    theirs = _theirs(torchattacks.NIFGSM(twin, **THEIRS, decay=1.0), xt, yt)
    ours = jaxadv.nifgsm(cnn.logits_fn, x, y, **OURS, decay=1.0)
    examples, coords = _compare_examples(ours, theirs, x)
    assert examples >= 0.85 and coords >= 0.99, (examples, coords)
    assert _accuracy(cnn.logits_fn, ours, y) <= _accuracy(cnn.logits_fn, theirs, y) + 0.005

    # One step is x + alpha * sign(gradient at x): every coordinate agrees except
    # where the two libraries' float32 gradients have opposite signs (an entry
    # within rounding of zero; a confident example's whole gradient is tiny).
    one_theirs = _theirs(torchattacks.NIFGSM(twin, **{**THEIRS, "steps": 1}), xt, yt)
    one_ours = np.asarray(jaxadv.nifgsm(cnn.logits_fn, x, y, **{**OURS, "steps": 1}))
    _, _, grad = jaxadv.gradients.loss_and_grad(
        cnn.logits_fn, jnp.asarray(x), jnp.asarray(y), loss=jaxadv.cross_entropy, targeted=False
    )
    xg = xt.clone().requires_grad_(True)
    (grad_theirs,) = torch.autograd.grad(torch.nn.functional.cross_entropy(twin(xg), yt, reduction="sum"), xg)
    opposite = np.sign(np.asarray(grad)) != np.sign(to_nhwc(grad_theirs))
    differ = np.abs(one_ours - one_theirs) > 1e-6
    assert np.all(opposite[differ]) and np.mean(differ) < 0.01, (np.sum(differ), np.sum(opposite))


def test_tifgsm_without_diversity_matches_example_by_example(setup: Any, cnn: Any) -> None:
    import torchattacks

    twin, x, y, xt, yt = setup
    attack = torchattacks.TIFGSM(_first_channel(twin), **THEIRS, **TI, decay=1.0, diversity_prob=0.0)
    np.testing.assert_allclose(attack.stacked_kernel[0, 0], compose.gaussian_kernel(5, 3.0), atol=1e-7)
    theirs = _theirs(attack, xt.repeat(1, 3, 1, 1), yt)[..., :1]
    # A traced probability 0 keeps the input-diversity branch in the program
    # (never taken), so this run shares its compilation with the TI-DI test.
    ours = jaxadv.tifgsm(
        cnn.logits_fn, x, y, key=jax.random.key(0), **OURS, kernel_size=5, nsig=3.0, decay=1.0,
        diversity_prob=jnp.float32(0.0),
    )  # fmt: skip
    examples, coords = _compare_examples(ours, theirs, x)
    assert examples >= 0.85 and coords >= 0.99, (examples, coords)
    assert _accuracy(cnn.logits_fn, ours, y) <= _accuracy(cnn.logits_fn, theirs, y) + 0.005


def _reference_resize(key: Any, x: Any) -> Any:
    """torchattacks' input diversity on 8x8 inputs with ``resize_rate=0.9``: bilinear
    (half-pixel centres, no antialiasing) to 7x7, zero-padded at the bottom and right."""
    del key
    small = jax.image.resize(x, (x.shape[0], 7, 7, x.shape[3]), "linear", antialias=False)
    return jnp.pad(small, ((0, 0), (0, 1), (0, 1), (0, 0)))


def test_di_loop_with_the_reference_transform_matches_example_by_example(setup: Any, cnn: Any) -> None:
    # With diversity_prob=1 torchattacks' DI-FGSM is deterministic on 8x8 inputs
    # (its size draw and pad draw have one value each): our loop, given the same
    # transform as a gradient source, must retrace it.
    import torchattacks

    twin, x, y, xt, yt = setup
    theirs = _theirs(torchattacks.DIFGSM(twin, **THEIRS, decay=0.0, diversity_prob=1.0), xt, yt)
    attack = compose.Attack(
        compose.eot(num_samples=1, transform=_reference_resize),
        compose.momentum(0.0),
        keep_best=True,
        step_factor=1.0,
    )
    ours = attack(cnn.logits_fn, x, y, key=jax.random.key(0), **OURS)
    examples, coords = _compare_examples(ours, theirs, x)
    assert examples >= 0.85 and coords >= 0.99, (examples, coords)


def _mean_accuracies(
    cnn: Any,
    y: np.ndarray,
    ours: Callable[[Any], Any],
    theirs: Callable[[int], np.ndarray],
    seeds: tuple[int, ...] = SEEDS,
) -> tuple[float, float]:
    a = np.mean([_accuracy(cnn.logits_fn, ours(jax.random.key(s)), y) for s in seeds])
    b = np.mean([_accuracy(cnn.logits_fn, theirs(s), y) for s in seeds])
    return float(a), float(b)


def test_vmifgsm_robust_accuracy(setup: Any, cnn: Any) -> None:
    import torchattacks

    twin, x, y, xt, yt = setup
    attack = torchattacks.VMIFGSM(twin, **THEIRS, decay=1.0, N=5, beta=1.5)
    ours, theirs = _mean_accuracies(
        cnn,
        y,
        lambda k: jaxadv.vmifgsm(
            cnn.logits_fn, x, y, key=k, **OURS, decay=1.0, num_neighbors=5, neighborhood=1.5
        ),
        lambda s: _theirs(attack, xt, yt, s),
        seeds=SEEDS[:2],  # the neighbours' noise mostly averages out within a run
    )
    assert ours <= theirs + 0.005, (ours, theirs)


def test_difgsm_robust_accuracy(setup: Any, cnn: Any) -> None:
    import torchattacks

    twin, x, y, xt, yt = setup
    attack = torchattacks.DIFGSM(twin, **THEIRS, decay=0.0, **DI)
    ours, theirs = _mean_accuracies(
        cnn,
        y,
        lambda k: jaxadv.mifgsm(cnn.logits_fn, x, y, key=k, **OURS, decay=0.0, **DI),
        lambda s: _theirs(attack, xt, yt, s, chunk=16),
    )
    assert ours <= theirs + DI_ALLOWANCE, (ours, theirs)


def test_tifgsm_robust_accuracy(setup: Any, cnn: Any) -> None:
    import torchattacks

    twin, x, y, xt, yt = setup
    attack = torchattacks.TIFGSM(_first_channel(twin), **THEIRS, **TI, decay=0.0, **DI)
    x3 = xt.repeat(1, 3, 1, 1)
    ours, theirs = _mean_accuracies(
        cnn,
        y,
        lambda k: jaxadv.tifgsm(
            cnn.logits_fn,
            x,
            y,
            key=k,
            **OURS,
            kernel_size=5,
            nsig=3.0,
            decay=0.0,
            diversity_prob=jnp.float32(0.5),
        ),
        lambda s: _theirs(attack, x3, yt, s, chunk=16)[..., :1],
    )
    assert ours <= theirs + DI_ALLOWANCE, (ours, theirs)


# --- EOT on a model with dropout left on ------------------------------------------


class _DropoutCNN(nn.Module):
    """``jaxadv.examples.DigitsCNN`` (same parameter names) with dropout on its
    penultimate features, always on: ``model.apply(variables, x, key)``."""

    rate: float

    @nn.compact
    def __call__(self, x: Any, key: Any) -> Any:
        x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
        x = nn.Dropout(self.rate, deterministic=False)(x.reshape(x.shape[0], -1), rng=key)
        return nn.Dense(10)(x)


def _dropout_apply(variables: Any, x: Any, key: Any) -> Any:
    return _DropoutCNN(DROPOUT).apply(variables, x, key)


@jax.jit
def _expected_softmax(logits_fn: Any, x: Any) -> Any:
    """The randomised model's prediction: its softmax averaged over 32 fixed draws."""
    keys = jax.random.split(jax.random.key(12345), 32)
    return jax.vmap(lambda k: jax.nn.softmax(logits_fn(x, k)))(keys).mean(axis=0)


@pytest.fixture(scope="module")
def dropout(cnn: Any, digits: Any) -> Any:
    logits_fn = jax.tree_util.Partial(_dropout_apply, cnn.variables)
    x, y = digits[1].x, digits[1].y

    def accuracy(x_adv: Any) -> float:
        return float(np.mean(np.argmax(np.asarray(_expected_softmax(logits_fn, jnp.asarray(x_adv))), 1) == y))

    assert accuracy(x) >= 0.95

    def attack(num_samples: int, key: Any) -> float:
        adv = jaxadv.eot_pgd(
            logits_fn, x, y, key=key, eps=EOT_EPS, steps=STEPS, num_samples=num_samples, randomized=True
        )
        assert float(jnp.max(jnp.abs(adv - x))) <= EOT_EPS + 1e-6
        return accuracy(adv)

    eot = float(np.mean([attack(EOT_SAMPLES, jax.random.key(s)) for s in SEEDS]))
    return accuracy, attack, eot


def test_eot_pgd_robust_accuracy_matches_torchattacks(setup: Any, cnn: Any, dropout: Any) -> None:
    import torch
    import torchattacks
    from torch_models import TorchDigitsCNN

    _, x, y, xt, yt = setup
    accuracy, _, ours = dropout

    class DropoutTwin(TorchDigitsCNN):
        def __init__(self, variables: Any) -> None:
            super().__init__(variables)
            self.dropout = torch.nn.Dropout(DROPOUT)

        def forward(self, images: Any) -> Any:
            h = images
            for conv, pad in zip(self.convs, self.pads, strict=True):
                h = torch.relu(conv(torch.nn.functional.pad(h, pad)))
            return self.head(self.dropout(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)))

    # Our default step size 2.5 * eps / steps, and both start at random.
    attack = torchattacks.EOTPGD(
        DropoutTwin(cnn.variables),
        eps=EOT_EPS,
        alpha=2.5 * EOT_EPS / STEPS,
        steps=STEPS,
        eot_iter=EOT_SAMPLES,
    )
    attack.set_model_training_mode(model_training=True, dropout_training=True)
    theirs = float(np.mean([accuracy(_theirs(attack, xt, yt, s)) for s in SEEDS]))
    assert ours <= theirs + 0.005, (ours, theirs)


def test_eot_beats_one_draw_pgd_on_a_dropout_model(dropout: Any) -> None:
    # Same steps and step size; PGD follows one dropout draw per step.
    _, attack, eot = dropout
    pgd = float(np.mean([attack(1, jax.random.key(s)) for s in SEEDS]))
    assert eot < pgd - 0.03, (eot, pgd)
