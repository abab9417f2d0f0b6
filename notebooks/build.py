"""Write the notebooks of this folder from their source below, and run them.

    python notebooks/build.py                 # write and execute every notebook
    python notebooks/build.py 01 04           # only the notebooks whose names start so
    python notebooks/build.py --no-execute    # write them without outputs

The notebooks are committed with their outputs so that they read well without
running them; this script is how those outputs are made. Each notebook is a
list of cells: strings starting with ``"md:"`` are Markdown, the rest code.
``tests/test_notebooks.py`` executes the committed notebooks and checks that
they still match this source.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SETUP = """\
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxadv
from jaxadv import examples

%config InlineBackend.figure_formats = ["png"]
plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3, "image.cmap": "gray"})
jax.config.update("jax_numpy_rank_promotion", "allow")"""

SHOW_DIGITS = '''\
def show_digits(rows, row_labels, titles=None, suptitle=None, colors=None):
    """Draw rows of 8x8 digits as a grid, one row per entry of ``rows``."""
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.35 * n_cols, 1.5 * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.imshow(np.asarray(img).squeeze(), vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            if titles is not None and titles[r] is not None:
                color = colors[r][c] if colors is not None else "black"
                ax.set_title(titles[r][c], fontsize=9, color=color)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    plt.show()


def show_attack(x, x_adv, pred_clean, pred_adv, labels, title):
    """Clean digits, adversarial digits and their difference (mid-grey is no change)."""
    delta = np.asarray(x_adv) - np.asarray(x)
    scale = 0.5 / max(float(np.abs(delta).max()), 1e-12)
    show_digits(
        [x, x_adv, 0.5 + scale * delta],
        ["clean", "adversarial", "change"],
        [[f"pred {p}" for p in pred_clean], [f"pred {p}" for p in pred_adv], None],
        title,
        colors=[["black"] * len(x), ["crimson" if p != t else "black" for p, t in zip(pred_adv, labels)], None],
    )'''

TRAIN_CNN = """\
train, test = examples.load_digits(seed=0)
print(f"train {train.x.shape}, test {test.x.shape}, pixels in [{train.x.min()}, {train.x.max()}]")

model = examples.DigitsCNN()
variables = examples.train_classifier(model, train, seed=0)
logits_fn = jaxadv.from_flax(model, variables)
x, y = test.x, test.y
print(f"clean test accuracy: {examples.accuracy(logits_fn, x, y):.1%}")"""


# --------------------------------------------------------------------------- 01

NB01 = [
    """md:# 1. Adversarial examples: FGSM and BIM

A classifier that is 99% accurate on held-out digits can be made to misread
almost all of them by changes to the pixels that are small, bounded and
computed from the model's own gradient. This notebook builds the two classic
attacks that do it, the **fast gradient sign method** (FGSM) and its
iterative version, the **basic iterative method** (BIM), on a small CNN
trained on the digits set bundled with `jaxadv`.

**The picture.** Every 8x8 greyscale image is a point of the cube
$[0, 1]^{64}$. A classifier with $k$ classes cuts the *whole* cube into $k$
regions, although real digits occupy a thin sliver of it. Training only
places the boundaries well near the training points; nothing asks them to be
far from those points. An *adversarial example* for an input $x$ with label
$y$ is a point $x'$ of the cube with

$$\\|x' - x\\|_\\infty \\le \\epsilon \\quad\\text{and}\\quad f(x') \\ne y,$$

a small, bounded change that crosses a boundary. Such a point exists whenever
a boundary passes within $\\epsilon$ of $x$; the attacks below find one with
the gradient of the loss.""",
    SETUP,
    SHOW_DIGITS,
    """md:## The data and the model

The digits are 1,797 scans of handwritten digits at 8x8 pixels, 16 grey
levels, shipped inside the package (no download). We train the library's
small CNN (two strided convolutions and a linear layer) for a few seconds.""",
    TRAIN_CNN,
    """show_digits([x[:10]], ["clean"], [[f"label {int(c)}" for c in y[:10]]], "Ten test digits")""",
    """md:## FGSM: one step along the sign of the gradient

Let $J(x, y)$ be the training loss (cross-entropy) of the model on input $x$
with label $y$. To first order, a perturbation $\\delta$ changes it by
$\\nabla_x J^\\top \\delta$. Among all $\\delta$ with
$\\|\\delta\\|_\\infty \\le \\epsilon$, the one that increases this most moves
*every* pixel by $\\epsilon$ in the direction of its gradient:

$$x' = \\mathrm{clip}_{[0,1]}\\big(x + \\epsilon\\,\\mathrm{sign}(\\nabla_x J(x, y))\\big).$$

The first-order gain is $\\epsilon\\,\\|\\nabla_x J\\|_1$: it grows with the
number of pixels. Many small changes, each invisible, add up; this is why
high-dimensional models that behave almost linearly are easy to fool. One
gradient, one step: `jaxadv.fgsm`.""",
    """eps = 0.15
x_fgsm = jaxadv.fgsm(logits_fn, x, y, eps=eps)

print(f"accuracy under FGSM at eps={eps}: {examples.accuracy(logits_fn, x_fgsm, y):.1%}")
print(f"largest pixel change: {float(jnp.max(jnp.abs(x_fgsm - x))):.3f}")
print(f"pixels still in [0, 1]: {bool((x_fgsm >= 0).all() and (x_fgsm <= 1).all())}")""",
    """md:The linear picture predicts the effect well for a small eps: the change of
the loss is close to $\\epsilon\\,\\|\\nabla_x J\\|_1$ (clipping at the box
makes it a little smaller).""",
    """def loss_per_example(inputs, labels):
    z = jaxadv.logits(logits_fn, inputs)
    return jaxadv.cross_entropy(z, jax.nn.one_hot(labels, 10))

grads = jax.grad(lambda inp: loss_per_example(inp, y).sum())(jnp.asarray(x))
small = 0.01
x_small = jaxadv.fgsm(logits_fn, x, y, eps=small)
actual = loss_per_example(x_small, y) - loss_per_example(x, y)
predicted = small * jnp.abs(grads).reshape(len(y), -1).sum(axis=1)

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.scatter(predicted, actual, s=8, alpha=0.6)
top = float(max(predicted.max(), actual.max()))
ax.plot([0, top], [0, top], "k--", lw=1, label="actual = predicted")
ax.set_xlabel(r"first-order prediction $\\epsilon\\,\\|\\nabla_x J\\|_1$")
ax.set_ylabel("actual increase of the loss")
ax.set_title(f"FGSM at eps={small}: the linear picture")
ax.legend()
plt.show()""",
    """md:What the attack does to the digits: the top row is the clean input with the
model's prediction, the middle row the adversarial input (prediction in red),
the bottom row the perturbation, amplified. The digits stay perfectly
readable to a person.""",
    """pred_clean = np.asarray(jaxadv.predict(logits_fn, x))
pred_fgsm = np.asarray(jaxadv.predict(logits_fn, x_fgsm))
fooled = np.nonzero((pred_clean == y) & (pred_fgsm != y))[0][:8]
show_attack(x[fooled], np.asarray(x_fgsm)[fooled], pred_clean[fooled], pred_fgsm[fooled], y[fooled],
            f"FGSM at eps={eps}: clean digits, adversarial digits, change")""",
    """md:## BIM: many small steps, projected back into the ball

One step follows the gradient at $x$ only. The basic iterative method takes
$T$ small steps of size $\\alpha$, re-reading the gradient each time, and
after every step clips back into the $\\epsilon$-box around $x$ and into the
valid pixel range:

$$x_0 = x,\\qquad
x_{t+1} = \\mathrm{clip}_{[0,1]}\\Big(\\mathrm{clip}_{x \\pm \\epsilon}\\big(x_t + \\alpha\\,\\mathrm{sign}(\\nabla_x J(x_t, y))\\big)\\Big).$$

The number of steps trades computation for strength. `jaxadv.bim` runs the
whole loop as one compiled program, cached, so a second call with the same
shapes compiles nothing and a new number of steps does not recompile (inside
your own `jit` it becomes one `lax.fori_loop` of your program).""",
    """x_bim = jaxadv.bim(logits_fn, x, y, eps=eps, step_size=eps / 8, steps=20)
print(f"accuracy at eps={eps}: FGSM {examples.accuracy(logits_fn, x_fgsm, y):.1%}, "
      f"BIM-20 {examples.accuracy(logits_fn, x_bim, y):.1%}")

pred_bim = np.asarray(jaxadv.predict(logits_fn, x_bim))
survivors = np.nonzero((pred_fgsm == y) & (pred_bim != y))[0][:8]
show_attack(x[survivors], np.asarray(x_bim)[survivors], pred_clean[survivors], pred_bim[survivors], y[survivors],
            f"Digits that resist FGSM but not BIM-20 (eps={eps})")""",
    """md:How many steps are enough? Each step costs one forward and one backward
pass; the accuracy under attack falls quickly over the first few steps and
then levels off.""",
    """step_counts = [1, 2, 3, 5, 10, 20, 40]
eps_small = eps
acc_steps = [
    examples.accuracy(logits_fn, jaxadv.bim(logits_fn, x, y, eps=eps_small, step_size=2.5 * eps_small / t, steps=t), y)
    for t in step_counts
]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(step_counts, np.array(acc_steps) * 100, marker="o")
ax.axhline(examples.accuracy(logits_fn, jaxadv.fgsm(logits_fn, x, y, eps=eps_small), y) * 100,
           color="gray", ls="--", label="FGSM")
ax.set_xscale("log")
ax.set_xlabel("BIM steps (step size 2.5 eps / steps)")
ax.set_ylabel("accuracy under attack (%)")
ax.set_title(f"Stronger with more steps (eps={eps_small})")
ax.legend()
plt.show()""",
    """md:## Accuracy against eps

The size of the ball is the attacker's budget. `eps` is a traced argument:
sweeping it reuses one compiled program, and
`jaxadv.evaluation.accuracy_vs_eps` even runs the whole sweep as one `vmap`.
BIM is looped over eps here to show that calling an attack with a new eps
costs no compilation.""",
    """eps_grid = np.linspace(0.0, 0.3, 13)
acc_fgsm = jaxadv.evaluation.accuracy_vs_eps(logits_fn, x, y, eps_values=eps_grid, key=jax.random.key(0), attack="fgsm")
acc_bim = [examples.accuracy(logits_fn, jaxadv.bim(logits_fn, x, y, eps=e, steps=20), y) for e in eps_grid]

fig, ax = plt.subplots(figsize=(5.5, 4))
ax.plot(eps_grid, acc_fgsm * 100, marker="o", label="FGSM (one step)")
ax.plot(eps_grid, np.array(acc_bim) * 100, marker="s", label="BIM (20 steps)")
ax.set_xlabel(r"$\\epsilon$ ($L_\\infty$, pixels in [0, 1])")
ax.set_ylabel("test accuracy (%)")
ax.set_ylim(-2, 102)
ax.set_title("Digits CNN under attack")
ax.legend()
plt.show()""",
    """md:And what the adversarial digits look like as eps grows: at small eps the
change is faint; by the eps where accuracy is near zero it is visible, but
the digit is still clearly what it was.""",
    """idx = 3
row_eps = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
imgs = [np.asarray(jaxadv.bim(logits_fn, x[idx:idx + 1], y[idx:idx + 1], eps=e, steps=20))[0] for e in row_eps]
preds = [int(jaxadv.predict(logits_fn, im[None])[0]) for im in imgs]
show_digits(
    [imgs], [f"label {int(y[idx])}"],
    [[f"eps {e:g}: {p}" for e, p in zip(row_eps, preds)]],
    "One digit under BIM-20 as eps grows (title: eps, prediction)",
    colors=[["black" if p == y[idx] else "crimson" for p in preds]],
)""",
    """md:## What to remember

* The model is accurate on test data and still fooled: this is not
  overfitting, it is the geometry of boundaries in a high-dimensional cube.
* FGSM is one linearisation; it is cheap and underestimates the damage.
  BIM (and PGD, BIM from a random start) re-linearise at every step and are
  never weaker.
* `eps` is the attacker's budget, in the units of the raw inputs; see the
  threat-model conventions of the documentation.

Next: making the model predict a class of *our* choosing (notebook 2).""",
]

# --------------------------------------------------------------------------- 02

NB02 = [
    """md:# 2. Targeted attacks: choosing the wrong answer

An untargeted attack is happy with *any* wrong class. A targeted attack picks
the class it wants, $y_t$, and pushes the input toward it. Instead of
climbing the loss of the true label it *descends* the loss of the target:

$$x' = \\mathrm{clip}_{[0,1]}\\big(x - \\epsilon\\,\\mathrm{sign}(\\nabla_x J(x, y_t))\\big)
\\qquad\\text{(targeted FGSM)},$$

and the iterative version repeats this with small steps, clipping into the
$\\epsilon$-box each time, exactly like BIM. Choosing $y_t$ as the class the
model finds *least* likely, $y_{LL} = \\arg\\min_c f(x)_c$, gives the
*iterative least-likely class* method: the hardest target, so its success says
most about the model.

In `jaxadv` every attack takes `targeted=True`; `y` then holds the targets.""",
    SETUP,
    SHOW_DIGITS,
    TRAIN_CNN,
    """md:## Random targets, one step and many

A targeted success is an input classified as *its target*. We draw one random
wrong class per digit with `jaxadv.random_targets` and compare targeted FGSM
with its iterative version as eps grows.""",
    """key = jax.random.key(0)
targets = jaxadv.random_targets(key, y, num_classes=10)
pred_clean = jaxadv.predict(logits_fn, x)

def hit_rate(x_adv, t):
    return float(jnp.mean(jaxadv.predict(logits_fn, x_adv) == t))

eps_grid = np.linspace(0.0, 0.4, 9)
fgsm_t = [hit_rate(jaxadv.fgsm(logits_fn, x, targets, eps=e, targeted=True), targets) for e in eps_grid]
bim_t = [hit_rate(jaxadv.bim(logits_fn, x, targets, eps=e, steps=20, targeted=True), targets) for e in eps_grid]

least = jaxadv.least_likely(logits_fn, x)
ll_bim = [hit_rate(jaxadv.bim(logits_fn, x, least, eps=e, steps=20, targeted=True), least) for e in eps_grid]

fig, ax = plt.subplots(figsize=(5.5, 4))
ax.plot(eps_grid, np.array(fgsm_t) * 100, marker="o", label="targeted FGSM, random target")
ax.plot(eps_grid, np.array(bim_t) * 100, marker="s", label="targeted BIM-20, random target")
ax.plot(eps_grid, np.array(ll_bim) * 100, marker="^", label="iterative least-likely class")
ax.set_xlabel(r"$\\epsilon$ ($L_\\infty$)")
ax.set_ylabel("reached the target (%)")
ax.set_ylim(-2, 102)
ax.set_title("Targeted attacks on the digits CNN")
ax.legend()
plt.show()""",
    """md:Three things show. A single step rarely lands on a chosen class: the
gradient of one target's loss at $x$ says little about where that class's
region is. The iterative attack follows the boundary and gets there. And the
least-likely class needs the largest eps, as it should.

Compare with the untargeted attack at the same eps: leaving the true class is
much easier than reaching a chosen one.""",
    """for e in (0.1, 0.2):
    untargeted = 1 - examples.accuracy(logits_fn, jaxadv.bim(logits_fn, x, y, eps=e, steps=20), y)
    rand = hit_rate(jaxadv.bim(logits_fn, x, targets, eps=e, steps=20, targeted=True), targets)
    ll = hit_rate(jaxadv.bim(logits_fn, x, least, eps=e, steps=20, targeted=True), least)
    print(f"eps={e}: untargeted success {untargeted:.1%}, random target {rand:.1%}, least-likely {ll:.1%}")""",
    """md:## One digit, every target

Here is one test digit pushed toward each of the ten classes with targeted
BIM. The titles give the model's prediction; red where it is the target.""",
    """idx = int(np.nonzero(y == 3)[0][0])
eps_one = 0.25
x_one = np.repeat(x[idx:idx + 1], 10, axis=0)
all_targets = jnp.arange(10)
x_to = jaxadv.bim(logits_fn, x_one, all_targets, eps=eps_one, steps=40, targeted=True)
p_to = np.asarray(jaxadv.predict(logits_fn, x_to))
show_digits(
    [np.asarray(x_to)],
    [f"a {int(y[idx])}, eps {eps_one}"],
    [[f"target {t}: {p}" for t, p in zip(range(10), p_to)]],
    "Targeted BIM-40 toward each class",
    colors=[["crimson" if p == t and t != y[idx] else "black" for t, p in zip(range(10), p_to)]],
)""",
    """md:## Which targets are easy?

We attack every test digit toward every other class at a fixed eps and count,
for each (true class, target class) pair, how often the target is reached.
All 397 x 9 attacks run as one batch: the model sees a batch of 3,573
digits, and BIM treats each row independently.""",
    """eps_matrix = 0.15
rows = np.repeat(np.arange(len(y)), 9)
offsets = np.tile(np.arange(1, 10), len(y))
pair_targets = (y[rows] + offsets) % 10
x_pairs = jaxadv.bim(logits_fn, x[rows], pair_targets, eps=eps_matrix, steps=20, targeted=True)
reached = np.asarray(jaxadv.predict(logits_fn, x_pairs)) == pair_targets

rate = np.full((10, 10), np.nan)
for s in range(10):
    for t in range(10):
        if s != t:
            sel = (y[rows] == s) & (pair_targets == t)
            rate[s, t] = reached[sel].mean()

fig, ax = plt.subplots(figsize=(6.2, 5.2))
im = ax.imshow(rate * 100, cmap="viridis", vmin=0, vmax=100)
ax.grid(False)
for s in range(10):
    for t in range(10):
        if s != t:
            ax.text(t, s, f"{rate[s, t] * 100:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if rate[s, t] < 0.5 else "black")
ax.set_xticks(range(10)), ax.set_yticks(range(10))
ax.set_xlabel("target class")
ax.set_ylabel("true class")
ax.set_title(f"Targeted BIM-20, eps={eps_matrix}: % reaching the target", fontsize=11)
fig.colorbar(im, ax=ax, label="success (%)")
plt.show()""",
    """easiest = np.dstack(np.unravel_index(np.argsort(-np.nan_to_num(rate, nan=-1).ravel()), rate.shape))[0][:5]
hardest = np.dstack(np.unravel_index(np.argsort(np.nan_to_num(rate, nan=2).ravel()), rate.shape))[0][:5]
print("easiest (true -> target):", ", ".join(f"{s}->{t} {rate[s, t]:.0%}" for s, t in easiest))
print("hardest (true -> target):", ", ".join(f"{s}->{t} {rate[s, t]:.0%}" for s, t in hardest))""",
    """md:The matrix is far from uniform and not symmetric. Easy pairs are digits
that share strokes (a few pixels turn one into the other); hard targets are
classes whose region lies far from the source digits. A good choice of
source image, one close to the target class, makes a targeted attack much
cheaper.

Next: attacking a model whose gradients we cannot see (notebook 3).""",
]

# --------------------------------------------------------------------------- 03

NB03 = [
    """md:# 3. Black-box attacks: no gradients needed

So far the attacker read the model's gradient: a *white-box* attack. Hiding
the model does not make it safe. Three weaker kinds of access still suffice:

* **no access at all**: build your own *surrogate* model for the same task,
  attack it, and hand the result to the target (**transfer**);
* **scores**: query the target's output probabilities and search for a
  perturbation that lowers the true class's margin (**score-based**: the
  Square Attack, or gradient estimates such as SPSA and NES);
* **labels only**: query the predicted class and walk along the decision
  boundary (**decision-based**: HopSkipJump).

Why does transfer work? Models trained on the same data learn similar
features, and their boundaries near the data are roughly aligned; an
adversarial direction for one, largely a direction of many small coherent
pixel changes, raises the loss of the other too.""",
    SETUP,
    SHOW_DIGITS,
    TRAIN_CNN,
    """md:## Transfer from a surrogate

The target is the CNN above; we only use its predictions. The attacker
trains its own models on the training digits: an MLP, a second CNN (another
seed), and the average of the two. `jaxadv.transfer` crafts with any attack
of the library on the surrogate(s) and measures how often the target is
fooled. We also try MI-FGSM, whose momentum was proposed to make examples
transfer better than PGD's, which can overfit the surrogate's own boundary.""",
    """n = 200  # the first 200 test digits, for every attack of this notebook
xb, yb = x[:n], y[:n]
ok = np.asarray(jaxadv.predict(logits_fn, xb)) == yb  # rates below are over these

mlp = examples.DigitsMLP()
mlp_fn = jaxadv.from_flax(mlp, examples.train_classifier(mlp, train, seed=1, epochs=15))
cnn_b_fn = jaxadv.from_flax(model, examples.train_classifier(model, train, seed=1, epochs=15))
print(f"surrogates: MLP accuracy {examples.accuracy(mlp_fn, x, y):.1%}, second CNN {examples.accuracy(cnn_b_fn, x, y):.1%}")

def fooled_rate(x_adv):
    return float(np.mean(np.asarray(jaxadv.predict(logits_fn, x_adv))[ok] != yb[ok]))

key = jax.random.key(0)
eps_grid = [0.1, 0.15, 0.2, 0.3]
crafting = {
    "PGD-20 on the MLP": (jaxadv.pgd, [mlp_fn], dict(key=key)),
    "PGD-20 on the CNN (seed 1)": (jaxadv.pgd, [cnn_b_fn], dict(key=key)),
    "PGD-20 on both (ensemble)": (jaxadv.pgd, [mlp_fn, cnn_b_fn], dict(key=key)),
    "MI-FGSM-20 on both (ensemble)": (jaxadv.mifgsm, [mlp_fn, cnn_b_fn], {}),
}
transfer_rates = {
    name: [fooled_rate(jaxadv.transfer(attack, sur, logits_fn, xb, yb, eps=e, steps=20, **kw).x_adv) for e in eps_grid]
    for name, (attack, sur, kw) in crafting.items()
}
white_box = [fooled_rate(jaxadv.pgd(logits_fn, xb, yb, key=key, eps=e, steps=20)) for e in eps_grid]

fig, ax = plt.subplots(figsize=(6, 4.2))
ax.plot(eps_grid, np.array(white_box) * 100, "k--", marker="o", label="white-box PGD-20 (reference)")
for name, r in transfer_rates.items():
    ax.plot(eps_grid, np.array(r) * 100, marker="s", label=name)
ax.set_xlabel(r"$\\epsilon$ ($L_\\infty$)")
ax.set_ylabel("target CNN fooled (%)")
ax.set_ylim(-2, 102)
ax.set_title("Transfer: crafted on a surrogate, evaluated on the target")
ax.legend(fontsize=8)
plt.show()""",
    """md:Transfer needs a larger eps than a white-box attack for the same effect,
but it needs no access to the target at all: by eps = 0.2 most crafted digits
already fool it. The surrogate's architecture matters a little (here the
MLP's examples transfer least); ensembles of surrogates and momentum, which
help on large image models, make little difference on a model this small.

## Score-based: the Square Attack

With access to the target's scores, we wrap it as an opaque NumPy function
with `jaxadv.from_callable`, exactly as one would wrap a model served by
another framework; asking it for a gradient raises an error. The Square
Attack then does a random search: at each query it proposes changing a random
square of pixels to $x \\pm \\epsilon$ and keeps the proposal if the margin
$z_y - \\max_{j \\ne y} z_j$ drops. Its square size shrinks on a fixed
schedule.""",
    """predict_fn = jax.jit(lambda batch: jax.nn.softmax(logits_fn(batch)))

def remote_model(batch: np.ndarray) -> np.ndarray:
    # Stands for any model we can only query: NumPy in, probabilities out.
    return np.asarray(predict_fn(batch))

black_box = jaxadv.from_callable(remote_model, num_classes=10)
try:
    jax.grad(lambda inp: black_box(inp).sum())(jnp.asarray(x[:2]))
except jaxadv.GradientNotAvailableError as e:
    print("no gradient:", str(e)[:90], "...")

eps_bb, budget = 0.15, 500
sq = jaxadv.square(black_box, xb, yb, key=key, eps=eps_bb, queries=budget, return_info=True)
print(f"Square, eps={eps_bb}, {budget} queries: target fooled on {fooled_rate(sq.x_adv):.1%} "
      f"of the {ok.sum()} correctly classified digits; median queries of the successes "
      f"{np.median(np.asarray(sq.queries)[np.asarray(sq.success) & ok]):.0f}")""",
    """md:Query cost matters for a black-box attacker. Each example stops as soon as it
is misclassified, so the success rate as a function of the budget is the
cumulative distribution of `result.queries` over the successes (with
`return_info=True` an attack returns `result`: `x_adv`, `success` and
`queries`). We compare
the Square Attack with the two gradient-estimation attacks, SPSA and NES,
which estimate $\\nabla_x$ of the margin from finite differences along random
directions and then take PGD steps (run here on the JAX model directly, which
is faster; they only query it).""",
    """results = {
    "Square": sq,
    "SPSA": jaxadv.spsa(logits_fn, xb, yb, key=key, eps=eps_bb, queries=budget, return_info=True),
    "NES": jaxadv.nes(logits_fn, xb, yb, key=key, eps=eps_bb, queries=budget, return_info=True),
}
fig, ax = plt.subplots(figsize=(5.5, 4))
grid = np.arange(0, budget + 1, 5)
for name, res in results.items():
    q = np.asarray(res.queries)[np.asarray(res.success) & ok]
    ax.plot(grid, [(q <= g).sum() / ok.sum() * 100 for g in grid], label=name)
ax.set_xlabel("queries per example")
ax.set_ylabel("target fooled (%)")
ax.set_ylim(-2, 102)
ax.set_title(rf"Score-based attacks, $\\epsilon$={eps_bb} ($L_\\infty$)")
ax.legend()
plt.show()""",
    """md:## Decision-based: HopSkipJump

With only the predicted label, there is no margin to follow. HopSkipJump
starts from any misclassified point (random noise), then repeats: a binary
search to the decision boundary between that point and $x$, an estimate of
the boundary's normal from the labels of random points around it, and a step
along that normal. The point stays misclassified while its distance to $x$
shrinks. It has no eps: it minimises the $L_2$ distance, so we compare the
size of what it finds with white-box minimal attacks (DeepFool, Carlini-Wagner).""",
    """labels_only = jaxadv.from_callable(lambda b: np.argmax(remote_model(b), axis=1), num_classes=10, returns="labels")
n_min = 30
keep = np.nonzero(ok)[0][:n_min]  # correctly classified digits only
xs, ys = xb[keep], yb[keep]

def l2_found(x_adv):
    x_adv = np.asarray(x_adv)
    fooled = np.asarray(jaxadv.predict(logits_fn, x_adv)) != ys
    size = np.sqrt(((x_adv - xs) ** 2).reshape(n_min, -1).sum(1))
    return np.where(fooled, size, np.inf)

hsj = jaxadv.hop_skip_jump(labels_only, xs, ys, key=key, queries=1000, init_evals=20, max_evals=100)
sizes = {
    "HopSkipJump\\n(1000 label queries)": l2_found(hsj),
    "DeepFool\\n(white-box)": l2_found(jaxadv.deepfool(logits_fn, xs, ys)),
    "Carlini-Wagner L2\\n(white-box)": l2_found(jaxadv.cw_l2(logits_fn, xs, ys, steps=100, binary_search_steps=5, initial_const=1.0)),
}

fig, ax = plt.subplots(figsize=(6, 3.4))
rng = np.random.default_rng(0)
for row, s in enumerate(sizes.values()):
    s = s[np.isfinite(s)]
    ax.scatter(s, row + rng.uniform(-0.15, 0.15, len(s)), s=14, alpha=0.6)
    ax.plot([np.median(s)] * 2, [row - 0.3, row + 0.3], color="black", lw=2)
ax.set_yticks(range(len(sizes)), list(sizes))
ax.set_xlabel(r"$\\|x' - x\\|_2$ of the adversarial example found (bar: median)")
ax.set_ylabel("attack")
ax.set_title(f"How close to the boundary each attack gets ({n_min} digits)")
plt.show()
for name, s in sizes.items():
    print(f"{name.replace(chr(10), ' '):38s} fooled {np.isfinite(s).mean():.0%}, median L2 {np.median(s[np.isfinite(s)]):.2f}")""",
    """md:With a thousand label queries and nothing but the predicted class,
HopSkipJump lands within reach of what the white-box attacks find with
gradients.

## Summary""",
    """i = eps_grid.index(eps_bb)
rows = [
    ("white-box PGD-20", "gradients", white_box[i]),
    ("transfer, PGD-20 on the ensemble", "none", transfer_rates["PGD-20 on both (ensemble)"][i]),
    ("transfer, MI-FGSM-20 on the ensemble", "none", transfer_rates["MI-FGSM-20 on both (ensemble)"][i]),
    (f"Square, {budget} queries", "scores", fooled_rate(results["Square"].x_adv)),
    (f"SPSA, {budget} queries", "scores", fooled_rate(results["SPSA"].x_adv)),
    (f"NES, {budget} queries", "scores", fooled_rate(results["NES"].x_adv)),
]
print(f"target CNN fooled at eps={eps_bb}, {ok.sum()} correctly classified digits")
print(f"{'attack':38s} {'needs':10s} fooled")
for name, needs, rate in rows:
    print(f"{name:38s} {needs:10s} {rate:.1%}")""",
    """md:Hiding the weights raises the attacker's cost; it does not remove the
vulnerability. Next: training models that resist (notebook 4).""",
]

# --------------------------------------------------------------------------- 04

NB04 = [
    """md:# 4. Defending: adversarial training

Adversarial examples exist because training never asks the model to be
robust: it minimises the loss *at* the training points, not around them.
Adversarial training asks. It replaces the usual objective by a min-max
problem over the threat model (Madry et al., 2018):

$$\\min_\\theta\\; \\mathbb{E}_{(x, y)}\\Big[\\max_{\\|\\delta\\|_\\infty \\le \\epsilon}
J\\big(f_\\theta(x + \\delta), y\\big)\\Big].$$

The inner maximisation is an attack (PGD with a few steps); the outer one is
ordinary training on the attack's output. `jaxadv.training` provides the
losses (`pgd_at_loss`, `fast_at_loss`, `trades_loss`) and whole jitted steps
(`make_train_step`) for Flax models and optax optimisers.

We train the same CNN three ways, with the same optimiser and epochs:
normally, with **Fast-AT** (one FGSM step from a random start, about twice
the cost of normal training) and with **PGD-AT** (several PGD steps), and
compare their robust accuracy curves.""",
    SETUP,
    SHOW_DIGITS,
    """import optax

train, test = examples.load_digits(seed=0)
x, y = test.x, test.y
model = examples.DigitsCNN()
eps_train = 0.15
epochs, batch_size = 20, 64

def train_with(method, **hyper):
    tx = optax.adam(3e-3)
    state = jaxadv.training.init_train_state(model.init(jax.random.key(0), x[:1]), tx)
    step = jaxadv.training.make_train_step(model, tx, method=method, **hyper)
    rng = np.random.default_rng(0)
    key = jax.random.key(1)
    for _ in range(epochs):
        order = rng.permutation(len(train.y))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            key, sub = jax.random.split(key)
            state, metrics = step(state, train.x[idx], train.y[idx], sub)
    return jaxadv.from_flax(model, {"params": state.params})

# Forward + backward passes per training example: 1, 2 and 6.
trained = {
    "normal": train_with("clean"),
    "Fast-AT": train_with("fast", eps=eps_train),
    "PGD-AT": train_with("pgd", eps=eps_train, step_size=eps_train / 2, steps=5),
}
for name, fn in trained.items():
    print(f"{name:8s} clean test accuracy {examples.accuracy(fn, x, y):.1%}")""",
    """md:## Robust accuracy, side by side

Each panel is one model, attacked with FGSM and with PGD-20 over a range of
eps (the whole sweep is one compiled `vmap` per attack). The dotted line marks
the training eps.""",
    """eps_grid = np.linspace(0.0, 0.3, 13)
key = jax.random.key(0)
curves = {}
fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
titles = {"normal": "normal training", "Fast-AT": "Fast-AT (FGSM, random start)", "PGD-AT": "PGD-AT (5 steps)"}
for ax, (name, fn) in zip(axes, trained.items()):
    acc_f = jaxadv.evaluation.accuracy_vs_eps(fn, x, y, eps_values=eps_grid, key=key, attack="fgsm")
    acc_p = jaxadv.evaluation.accuracy_vs_eps(fn, x, y, eps_values=eps_grid, key=key, steps=20)
    curves[name] = acc_p
    ax.plot(eps_grid, acc_f * 100, marker="o", label="FGSM")
    ax.plot(eps_grid, acc_p * 100, marker="s", label="PGD-20")
    ax.axvline(eps_train, color="gray", ls=":", label="training eps")
    ax.set_title(titles[name])
    ax.set_xlabel(r"$\\epsilon$ ($L_\\infty$)")
    ax.set_ylim(-2, 102)
    ax.legend()
axes[0].set_ylabel("test accuracy under attack (%)")
fig.suptitle("Normal vs adversarial training on the digits CNN")
fig.tight_layout()
plt.show()""",
    """print("accuracy under PGD-20")
print(f"{'eps':>6s}" + "".join(f"{name:>10s}" for name in curves))
for i in range(0, len(eps_grid), 2):
    print(f"{eps_grid[i]:6.3f}" + "".join(f"{curves[name][i]:10.1%}" for name in curves))""",
    """md:Normal training collapses under PGD well before the training eps; the
adversarially trained models hold most of their accuracy up to it, at the
price of a little clean accuracy and several times the training cost.
Robustness is specific to the threat model: beyond the training eps the
curves fall again.

## The same attack against both models

Eight test digits attacked with PGD-40 at an eps beyond the training eps.
Red titles mark the digits the attack turned into another class.""",
    """robust_fn = trained["PGD-AT"]
normal_fn = trained["normal"]
eps_big = 0.2
sel = np.arange(8)
adv_normal = np.asarray(jaxadv.pgd(normal_fn, x[sel], y[sel], key=key, eps=eps_big, steps=40))
adv_robust = np.asarray(jaxadv.pgd(robust_fn, x[sel], y[sel], key=key, eps=eps_big, steps=40))
p_normal = np.asarray(jaxadv.predict(normal_fn, adv_normal))
p_robust = np.asarray(jaxadv.predict(robust_fn, adv_robust))
show_digits(
    [x[sel], adv_normal, adv_robust],
    ["clean", "vs normal", "vs PGD-AT"],
    [[f"label {int(c)}" for c in y[sel]], [f"pred {p}" for p in p_normal], [f"pred {p}" for p in p_robust]],
    f"PGD-40 at eps={eps_big} against each model",
    colors=[["black"] * 8, ["crimson" if p != c else "black" for p, c in zip(p_normal, y[sel])],
            ["crimson" if p != c else "black" for p, c in zip(p_robust, y[sel])]],
)""",
    """md:## A large radius: ramp eps up

PGD-AT at a large radius from the very first step can fail to train: on MNIST
at $\\epsilon = 0.3$ the loss stayed at $\\log 10 \\approx 2.30$ and the
accuracy near chance, while the same training with $\\epsilon$ ramped up
linearly over the first epoch reached 97% clean and 75% under PGD-40. The
losses and step builders take `eps` (and `step_size`) as an optax schedule of
the step count; the count is traced, so the ramp recompiles nothing.

Below, PGD-AT at $\\epsilon = 0.3$ on the digits, from the first step and with
a one-epoch ramp, watched after every epoch by `robust_accuracy_monitor`,
which also warns (`ChanceAccuracyWarning`) when the clean accuracy sits at
chance. On 8x8 digits with 17 grey levels, 0.3 is beyond the radius at which
a digit keeps its class, so no model is robust there: what to compare is the
clean accuracy each run keeps while the adversarial loss sits near
$\\log 10$.""",
    """eps_big_train, epochs_big = 0.3, 4
steps_per_epoch = len(train.y) // batch_size
ramp = optax.linear_schedule(0.0, eps_big_train, transition_steps=steps_per_epoch)
runs = {
    "from the first step": dict(eps=eps_big_train, step_size=eps_big_train / 4),
    "ramped over one epoch": dict(eps=ramp, step_size=lambda t: ramp(t) / 4),
}
for name, hyper in runs.items():
    tx = optax.adam(3e-3)
    state = jaxadv.training.init_train_state(model.init(jax.random.key(0), x[:1]), tx)
    step = jaxadv.training.make_train_step(model, tx, method="pgd", steps=5, **hyper)
    rng, key, monitor = np.random.default_rng(0), jax.random.key(1), None
    for epoch in range(epochs_big):
        order = rng.permutation(len(train.y))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            key, sub = jax.random.split(key)
            state, metrics = step(state, train.x[idx], train.y[idx], sub)
        fn = jaxadv.from_flax(model, {"params": state.params})
        monitor = jaxadv.training.robust_accuracy_monitor(
            fn, x, y, monitor, step=int(state.step), key=jax.random.key(0), eps=eps_big_train, steps=10)
    print(f"{name:22s} last loss {float(metrics['loss']):.2f}, clean {monitor.last_clean_accuracy:.1%}, "
          f"PGD-10 {monitor.last_accuracy:.1%} (chance {monitor.chance:.1%}, stalled: {monitor.stalled})")""",
    """md:## A caution

These curves come from FGSM and PGD. A defence can look robust to them and
not be (for example by hiding its gradients); an honest number comes from a
diverse suite of attacks and a few sanity checks, the subject of notebook 5.
For Fast-AT, also watch for *catastrophic overfitting*, a sudden collapse of
PGD accuracy during training, with `jaxadv.training.robust_accuracy_monitor`.""",
]

# --------------------------------------------------------------------------- 05

NB05 = [
    """md:# 5. Honest evaluation

"Accuracy under PGD" is a lower bound on the damage an attacker can do, and
sometimes a very loose one. Many published defences looked robust because the
attacks used to evaluate them failed, not because the models were robust: a
model can *mask* its gradients (make them zero, noisy or misleading) so that
gradient attacks go nowhere, while its decision boundaries stay close to the
data. An honest evaluation

1. reports the **per-example worst case** over a diverse suite of attacks
   (different losses, targeted attacks, a minimal-norm attack, a black-box
   attack), and
2. runs **sanity checks** whose failure reveals masking.

`jaxadv.evaluate` does the first (`suite="standard"`: APGD with
cross-entropy, targeted APGD on the DLR loss, targeted FAB and the Square
Attack), and `jaxadv.evaluation.masking_checks` the second.""",
    SETUP,
    TRAIN_CNN,
    """md:## The standard suite on an ordinary model

Each attack only runs on the examples that all earlier attacks failed on; the
result records which attack fooled each example first.""",
    """n_eval, eps = 100, 0.1
xe, ye = x[:n_eval], y[:n_eval]
key = jax.random.key(0)
result = jaxadv.evaluate(logits_fn, xe, ye, eps=eps, suite="standard", key=key, progress=False)
print(result.summary())""",
    """md:## A model that only looks robust

We build a *masked* version of the same CNN: it first rounds its input to 256
grey levels, as an 8-bit image would be stored. That moves each pixel by at
most 1/510, so its decisions, and its decision boundaries, are those of the
original model. But rounding has a zero gradient almost everywhere: every
gradient attack sees a flat loss.""",
    """def quantised_apply(params, inputs):
    return model.apply(params, jnp.round(inputs * 255) / 255)

masked_fn = jaxadv.from_apply(quantised_apply, variables)
same = np.mean(np.asarray(jaxadv.predict(masked_fn, x)) == np.asarray(jaxadv.predict(logits_fn, x)))
print(f"masked model: clean accuracy {examples.accuracy(masked_fn, xe, ye):.1%}, same prediction as the original on {same:.1%} of the test set")

for name, attack in {
    "FGSM": lambda f: jaxadv.fgsm(f, xe, ye, eps=eps),
    "PGD-20": lambda f: jaxadv.pgd(f, xe, ye, key=key, eps=eps, steps=20),
}.items():
    print(f"{name:7s} accuracy: original model {examples.accuracy(logits_fn, attack(logits_fn), ye):.1%}, "
          f"masked model {examples.accuracy(masked_fn, attack(masked_fn), ye):.1%}")""",
    """md:Judged by PGD, the masked model is a miracle of robustness. The
gradient-masking checks are not fooled: an attack allowed to move anywhere in
the box must reach ~0% accuracy, and a black-box attack must not beat the
white-box ones. Both fail here, and each check says why.""",
    """report = jaxadv.evaluation.masking_checks(masked_fn, xe, ye, eps=eps, norm="linf", key=key)
for w in report.warnings:
    print("WARNING:", w)
print({k: round(v, 3) if isinstance(v, float) else v for k, v in report.figures.items()})""",
    """clean_report = jaxadv.evaluation.masking_checks(logits_fn, xe, ye, eps=eps, norm="linf", key=key)
print("original model warnings:", clean_report.warnings or "none")""",
    """md:The standard suite includes the black-box Square Attack for exactly this
reason: it never reads a gradient, so masking does not stop it. The
per-example worst case gives the honest number.""",
    """masked_result = jaxadv.evaluate(masked_fn, xe, ye, eps=eps, suite="standard", key=key, progress=False)
print(masked_result.summary())""",
    """rows = {
    "PGD-20 only": (
        examples.accuracy(logits_fn, jaxadv.pgd(logits_fn, xe, ye, key=key, eps=eps, steps=20), ye),
        examples.accuracy(masked_fn, jaxadv.pgd(masked_fn, xe, ye, key=key, eps=eps, steps=20), ye),
    ),
    "standard suite (worst case)": (result.robust_accuracy, masked_result.robust_accuracy),
}
fig, ax = plt.subplots(figsize=(6.5, 4))
width = 0.35
for i, (name, (a, b)) in enumerate(rows.items()):
    ax.bar(np.arange(2) + (i - 0.5) * width, [a * 100, b * 100], width, label=name)
ax.set_xticks(np.arange(2), ["original CNN", "masked CNN (input rounding)"])
ax.set_xlabel("model")
ax.set_ylabel(f"robust accuracy at eps={eps} (%)")
ax.set_ylim(0, 100)
ax.set_title("One gradient attack can be fooled; a suite is not")
ax.legend()
plt.show()""",
    """md:The suite's number for the masked model is close to the original model's.
It stays a little higher because only the black-box attack gets anywhere on
it, and a Square Attack with a finite query budget is somewhat weaker than
APGD. Rounding the input did not move a single decision boundary; it only
hid them from gradients.

## A second kind of masking: saturated scores

Multiplying the logits by a large constant changes no prediction, but it
saturates the softmax: for a confident example the cross-entropy is exactly
zero in float32 and so is its textbook gradient, $\\mathrm{softmax}(z) - y$.
PGD on that loss stays where it starts. Margin losses (Carlini-Wagner's,
APGD's DLR) do not saturate and see through it; so does the library's
`jaxadv.cross_entropy` (the default loss), which steps along the true direction
of the gradient where its value underflows to zero.""",
    """def scaled_apply(params, inputs):
    return 1e4 * model.apply(params, inputs)

def textbook_cross_entropy(logits, onehot):
    return -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)

saturated_fn = jaxadv.from_apply(scaled_apply, variables)
for name, loss in {
    "textbook cross-entropy": textbook_cross_entropy,
    "jaxadv.cross_entropy": jaxadv.cross_entropy,
    "CW margin loss": jaxadv.cw_margin,
}.items():
    x_adv = jaxadv.pgd(saturated_fn, xe, ye, key=key, eps=eps, steps=20, loss=loss)
    print(f"saturated model, PGD-20 with the {name}: accuracy {examples.accuracy(saturated_fn, x_adv, ye):.1%}")""",
    """md:## Checklist

* Report the worst case over a diverse suite, never a single attack.
* Accuracy must reach ~0% at a very large eps; if it does not, the attacks are
  failing, not the model succeeding.
* Single-step attacks must not beat iterative ones; black-box attacks must
  not beat white-box ones.
* Use margin losses (CW, DLR) besides cross-entropy.
* For a randomised model, attack the expectation over its randomness.""",
]

# --------------------------------------------------------------------------- 06

NB06 = [
    """md:# 6. Composing with your own training code

Every attack in `jaxadv` is a pure function of arrays. Called directly it runs
its whole loop as one compiled program, cached for the next call with the same
shapes; called inside *your* `jax.jit`, `jax.vmap` or `jax.grad`, it becomes a
`lax.fori_loop` inside your program. This notebook
shows three ways to use that: an attack inside a hand-written jitted training
step, a `vmap` over eps, and a batch sharded over devices.

The sharding part uses whatever devices exist. So that it shows a real split
on a laptop, this notebook asks XLA for four CPU devices *before* importing
JAX (on a machine with accelerators it uses them instead).""",
    """import os

if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
""",
    SETUP
    + """
import optax

print(jax.devices())""",
    """md:## An attack inside your jitted step

Here is an ordinary optax training loop for a small MLP written with plain
`jax.numpy`, no Flax: the model is `apply(params, x)`. To train it on
adversarial examples we call `jaxadv.pgd` *inside* the loss, on a
`from_apply` view of the current parameters, and stop the gradient through
the attack (the outer gradient is taken at the adversarial point, as in
adversarial training). Everything is one `jax.jit`.""",
    """def init_mlp(key, sizes=(64, 128, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]

def apply_mlp(params, x):
    h = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]

tx = optax.adam(3e-3)
EPS = 0.1

@jax.jit
def adversarial_step(params, opt_state, xb, yb, key):
    # The attack sees the current parameters as a traced pytree.
    model_fn = jaxadv.from_apply(apply_mlp, params)
    x_adv = jaxadv.pgd(model_fn, xb, yb, key=key, eps=EPS, steps=5)
    x_adv = jax.lax.stop_gradient(x_adv)

    def loss_fn(p):
        logits = apply_mlp(p, x_adv)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

train, test = examples.load_digits(seed=0)
x, y = test.x, test.y
params = init_mlp(jax.random.key(0))
opt_state = tx.init(params)
key = jax.random.key(1)
rng = np.random.default_rng(0)
losses = []
for epoch in range(15):
    order = rng.permutation(len(train.y))
    for start in range(0, len(order) - 63, 64):
        idx = order[start:start + 64]
        key, sub = jax.random.split(key)
        params, opt_state, loss = adversarial_step(params, opt_state, train.x[idx], train.y[idx], sub)
        losses.append(float(loss))

robust_mlp = jaxadv.from_apply(apply_mlp, params)
print(f"clean accuracy {examples.accuracy(robust_mlp, x, y):.1%}, "
      f"PGD-20 accuracy at eps={EPS}: {examples.accuracy(robust_mlp, jaxadv.pgd(robust_mlp, x, y, key=key, eps=EPS, steps=20), y):.1%}")

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot(np.convolve(losses, np.ones(20) / 20, mode="valid"))
ax.set_xlabel("training step")
ax.set_ylabel("adversarial loss (moving average)")
ax.set_title("Adversarial training in a hand-written jitted step")
plt.show()""",
    """md:The attack compiled into the step as one loop: the jaxpr of the step holds a
single loop primitive (a `fori_loop` with a fixed trip count is lowered to a
`scan`), not five unrolled copies of the model's forward and backward pass.""",
    """jaxpr = jax.make_jaxpr(adversarial_step)(params, opt_state, train.x[:64], train.y[:64], key)
text = str(jaxpr)
print(f"loops in the step: {text.count('scan[')} scan, {text.count('while[')} while")""",
    """md:## vmap over eps

`eps` is a traced argument, so an attack is an ordinary function of it. A
`vmap` over a vector of eps values runs the whole sweep as one batched
program. And because changing eps is only new data, calling the compiled
function again with other values does not compile again.""",
    """trace_count = 0

@jax.jit
def accuracy_at(eps_values, x, y, key):
    global trace_count
    trace_count += 1  # runs only while tracing

    def one(e):
        x_adv = jaxadv.pgd(robust_mlp, x, y, key=key, eps=e, steps=20)
        return jnp.mean(jnp.argmax(robust_mlp(x_adv), axis=-1) == y)

    return jax.vmap(one)(eps_values)

grid_a = jnp.linspace(0.0, 0.3, 7)
grid_b = jnp.linspace(0.05, 0.35, 7)
acc_a = accuracy_at(grid_a, x, y, key)
acc_b = accuracy_at(grid_b, x, y, key)
print(f"traced {trace_count} time(s) for two sweeps")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(grid_a, acc_a * 100, marker="o", label="sweep 1")
ax.plot(grid_b, acc_b * 100, marker="s", label="sweep 2 (no recompilation)")
ax.set_xlabel(r"$\\epsilon$ ($L_\\infty$)")
ax.set_ylabel("accuracy under PGD-20 (%)")
ax.set_title("One vmapped program for a whole eps sweep")
ax.legend()
plt.show()""",
    """md:eps may also be a vector with one value per example: the same compiled attack
then gives each example its own budget.""",
    """per_example_eps = jnp.where(y % 2 == 0, 0.05, 0.25)
x_adv = jaxadv.pgd(robust_mlp, x, y, key=key, eps=per_example_eps, steps=20)
size = jnp.max(jnp.abs(x_adv - x).reshape(len(y), -1), axis=1)
print(f"largest change, even labels: {float(size[y % 2 == 0].max()):.3f}; odd labels: {float(size[y % 2 == 1].max()):.3f}")""",
    """md:## Sharding the batch over devices

Attacks are per-example computations: split the batch over devices and each
device attacks its own rows, with no change to the attack.
`jaxadv.sharding.shard_batch` pads the batch to a multiple of the device
count (repeating its first example) and places it; `gather` brings the result
back and drops the padding. The same code runs on one device, on several, and
on several hosts after `jax.distributed.initialize()`.""",
    """mesh = jaxadv.sharding.batch_mesh()
batch = jaxadv.sharding.shard_batch((x, y), mesh=mesh)
xs, ys = batch.data
print(f"{len(jax.devices())} device(s); {batch.num_valid} real rows padded to {xs.shape[0]}")
print("x sharding:", xs.sharding.spec, "over mesh axes", mesh.axis_names)

model_on_mesh = jaxadv.sharding.replicate(robust_mlp, mesh)  # parameters copied to every device, once
x_adv_sharded = jaxadv.pgd(model_on_mesh, xs, ys, key=key, eps=EPS, steps=20)
print("adversarial batch sharding:", x_adv_sharded.sharding.spec)
rows_per_device = [s.data.shape[0] for s in x_adv_sharded.addressable_shards]
print("rows per device:", rows_per_device)

x_adv_np = jaxadv.sharding.gather(x_adv_sharded, batch.mask)
reference = np.asarray(jaxadv.pgd(robust_mlp, x, y, key=key, eps=EPS, steps=20))
print(f"gathered {x_adv_np.shape}; largest difference from the unsharded run: {np.abs(x_adv_np - reference).max():.2e}")""",
    """md:Each device ran the same attack on its rows: the result is the unsharded
one, and so is the accuracy under attack.""",
    """print(f"sharded: {examples.accuracy(robust_mlp, x_adv_np, y):.1%}, unsharded: {examples.accuracy(robust_mlp, reference, y):.1%}")""",
    """md:For whole datasets, `jaxadv.evaluate(..., sharding=True)` does the same
batch by batch. The documentation's scaling page has launch commands for
several accelerators and several hosts.""",
]

# --------------------------------------------------------------------------- 07

NB07 = [
    """md:# 7. Certified robustness: lower bounds next to attacks

Every number in the notebooks so far came from an attack. An attack that finds
an adversarial example proves the model is not robust there; an attack that
fails proves nothing, because a stronger one may succeed. Robust accuracy under
attack is therefore an **upper bound** on the true robust accuracy.

A **certificate** is a proof that *no* input of the threat model changes the
prediction. The fraction of examples with a certificate is a **lower bound**.
On the same examples at the same radius,

$$\\text{certified accuracy} \\;\\le\\; \\text{true robust accuracy} \\;\\le\\; \\text{accuracy under attack}.$$

The true value lies between the two; the gap is what neither side knows.
`jaxadv.certify` has two families of certificates, and `jaxadv.evaluation`
reports either beside the attacks:

* **bound propagation** (IBP, CROWN): deterministic bounds on the logits of the
  model itself over an $L_\\infty$ (or $L_2$, $L_1$) ball;
* **randomized smoothing**: a probabilistic $L_2$ certificate for a *smoothed*
  version of the model.""",
    SETUP,
    """import optax
from jaxadv import evaluation as ev
from jaxadv import training

train, test = examples.load_digits(seed=0)
x, y = test.x[:200], test.y[:200]
model = examples.DigitsMLP(hidden=(64,))
steps_per_epoch = len(train.y) // 64


def fit(loss_fn, epochs):
    \"\"\"Adam on loss_fn(logits_fn, x, y, key, step) over the training digits.\"\"\"
    variables = model.init(jax.random.key(0), x[:1])
    tx = optax.adam(3e-3)
    opt_state = tx.init(variables)

    @jax.jit
    def step(variables, opt_state, xb, yb, key, t):
        grads = jax.grad(lambda v: loss_fn(jaxadv.from_flax(model, v), xb, yb, key, t))(variables)
        updates, opt_state = tx.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    rng, key, t = np.random.default_rng(0), jax.random.key(1), 0
    for _ in range(epochs):
        order = rng.permutation(len(train.y))
        for start in range(0, len(order) - 63, 64):
            idx = order[start:start + 64]
            key, sub = jax.random.split(key)
            variables, opt_state = step(variables, opt_state, train.x[idx], train.y[idx], sub, t)
            t += 1
    return jaxadv.from_flax(model, variables)""",
    """md:## Bound propagation: is the label provably constant on the ball?

**IBP** (interval bound propagation) replaces every value inside the network by
an interval: the input box $[x - \\epsilon, x + \\epsilon] \\cap [0, 1]$ goes through
each layer (a dense layer maps centre $c$ and radius $r$ to $Wc + b$ and $|W| r$; a
ReLU clips both ends), giving bounds $\\underline z \\le z(x') \\le \\overline z$ on
the logits for *every* $x'$ in the ball. **CROWN** carries linear bounds backwards
instead, relaxing each unstable ReLU by two lines; it is tighter and costs more.
An example is **verified** when the lower bound of $z_y - z_j$ is positive for
every other class $j$: then no input of the ball is classified otherwise, and no
attack can ever succeed on it.

A normally trained network has loose bounds: its intervals grow layer by layer.
**IBP training** (Gowal et al., 2018) minimises the cross-entropy of the
worst-case logits from the bounds themselves (`jaxadv.training.ibp_loss`), with
$\\epsilon$ ramped up from 0 (`ibp_schedule`). We train the same small MLP both
ways, for a threat model of $\\epsilon = 0.1$ on pixels in $[0, 1]$.""",
    """EPS = 0.1


def clean_loss(f, xb, yb, key, t):
    return optax.softmax_cross_entropy_with_integer_labels(f(xb), yb).mean()


def ibp_loss(f, xb, yb, key, t):
    eps_t, kappa_t = training.ibp_schedule(t, warmup=steps_per_epoch, ramp=10 * steps_per_epoch, eps=1.1 * EPS)
    return training.ibp_loss(f, xb, yb, eps=eps_t, kappa=kappa_t)


models = {"normal training": fit(clean_loss, epochs=10), "IBP training": fit(ibp_loss, epochs=20)}
for name, f in models.items():
    print(f"{name:16s} clean test accuracy {examples.accuracy(f, x, y):.1%}")""",
    """md:`jaxadv.evaluation.certified_accuracy` runs the verification at a list of
radii (`bound_propagation(radii=..., method="ibp" | "crown")`); an example
certified at a radius is certified at every smaller one, so the curve never
rises. Beside it, PGD-20's accuracy at the same radii (one compiled `vmap` over
eps, `accuracy_vs_eps`).""",
    """radii = [0.0, 0.025, 0.05, 0.075, 0.1, 0.125]
key = jax.random.key(0)
curves = {}
print(f"{'':24s}" + "".join(f"{r:>8.3f}" for r in radii))
for name, f in models.items():
    for method in ("ibp", "crown"):
        cert = ev.certified_accuracy(f, x, y, certify=ev.bound_propagation(radii=radii, method=method, batch_size=200))
        curves[name, method] = cert
        print(f"{name + ', ' + method.upper():24s}" + "".join(f"{a:8.1%}" for a in cert.accuracy))
    pgd = ev.accuracy_vs_eps(f, x, y, eps_values=radii, key=key, steps=20)
    curves[name, "pgd"] = dict(zip(radii, np.asarray(pgd)))
    print(f"{name + ', PGD-20':24s}" + "".join(f"{a:8.1%}" for a in pgd))""",
    """fig = ev.plot_certified_accuracy(
    {"IBP bounds": curves["IBP training", "ibp"], "CROWN bounds": curves["IBP training", "crown"]},
    robust=curves["IBP training", "pgd"],
    title="IBP-trained MLP: verified vs PGD-20 accuracy",
)
plt.show()""",
    """md:The verified curves stay below the PGD curve at every radius, as they must:
a verified example cannot be broken by any attack. IBP verifies next to nothing on the
normally trained model beyond the smallest radius, while the IBP-trained model
keeps most of its accuracy *provably*; CROWN's tighter bounds verify more of
both. At $\\epsilon = 0.1$ the true robust accuracy of the IBP-trained model lies
between the CROWN figure and the PGD figure.

## Randomized smoothing: a certificate for a smoothed classifier

Bound propagation gets loose on deep networks. **Randomized smoothing**
(Cohen, Rosenfeld & Kolter, 2019) certifies any classifier $f$, at the price of
changing it: the **smoothed classifier** predicts the class that $f$ returns most
often under Gaussian noise,

$$g(x) = \\arg\\max_c\\; P_{\\delta \\sim N(0, \\sigma^2 I)}\\big(f(x + \\delta) = c\\big).$$

If the top class has probability at least $\\underline{p_A} > 1/2$, then $g$ is
constant on the whole $L_2$ ball of radius $R = \\sigma\\, \\Phi^{-1}(\\underline{p_A})$.
The probability is estimated from `n` noisy copies with a Clopper-Pearson bound,
so each certificate holds with probability at least $1 - \\alpha$ over the noise,
and $g$ abstains where the top class is not clearly ahead. With `n` draws the
largest radius that can be certified is $\\sigma\\,\\Phi^{-1}(\\alpha^{1/n})$.

The base model must be accurate under the noise, so it is trained on noisy
copies (`jaxadv.training.gaussian_augmentation_loss`). `jaxadv.evaluate` takes
the certification as one keyword, `certify=`: the result holds the certified
accuracy of the same examples next to the attacks' robust accuracy.""",
    """SIGMA = 0.25


def gaussian_loss(f, xb, yb, key, t):
    return training.gaussian_augmentation_loss(f, xb, yb, key=key, sigma=SIGMA)


noisy_fn = fit(gaussian_loss, epochs=10)
smoothing = ev.smoothing(sigma=SIGMA, radii=[0.0, 0.25, 0.5, 0.75], n0=100, n=1000, alpha=0.001, batch_size=200)
result = jaxadv.evaluate(
    noisy_fn, x, y, eps=0.5, norm="l2", suite="fast", key=key, batch_size=200,
    progress=False, checks=False, certify=smoothing,
)
print(result.summary())""",
    """md:The certified accuracy of the smoothed classifier at $r = 0.5$ sits well below
the attacks' robust accuracy of the base model at $\\epsilon = 0.5$. (Strictly,
the two bound different classifiers, $g$ and $f$; on a noise-trained model the
smoothed one is the more robust, so the comparison errs on the safe side.)
The plot shows the whole certified curve, computed from the per-example radii
(`result.certified.radius`), against PGD-20's $L_2$ accuracy.""",
    """l2_radii = [0.25, 0.5, 0.75, 1.0]
pgd_l2 = ev.accuracy_vs_eps(noisy_fn, x, y, eps_values=l2_radii, key=key, steps=20, norm="l2")
fig = ev.plot_certified_accuracy(
    {f"smoothing, sigma={SIGMA}": result.certified},
    robust=dict(zip(l2_radii, np.asarray(pgd_l2))),
    title="Gaussian-augmented MLP: certified (smoothed) vs PGD-20",
)
plt.show()
print(f"abstained: {result.certified.num_abstained} of {result.certified.num_examples}; "
      f"largest radius certifiable with n=1000: {SIGMA * jax.scipy.stats.norm.ppf(0.001 ** (1 / 1000)):.3f}")""",
    """md:## Lower bounds and upper bounds

* **Attacks** (`jaxadv.evaluate`) give an **upper bound** on robust accuracy. A
  stronger attack can only lower it; a weak or fooled attack (notebook 5)
  overstates robustness.
* **Certificates** give a **lower bound**. Bound propagation is exact
  arithmetic about the model itself; randomized smoothing is a statement about
  the smoothed classifier, true with probability $1 - \\alpha$ per example. A
  looser method (IBP instead of CROWN, fewer noise draws) can only lower it.
* Report both: `evaluate(..., certify=ev.bound_propagation(...))` or
  `certify=ev.smoothing(...)` puts them side by side for the same examples. When
  they meet, robust accuracy is known exactly; the gap between them is the
  honest uncertainty.""",
]

# --------------------------------------------------------------------------- 08

NB08 = [
    """md:# 8. A RobustBench model, converted and evaluated in JAX

The robust models people compare against are PyTorch checkpoints collected by
[RobustBench](https://robustbench.github.io). `jaxadv.zoo` defines their
architectures in Flax and converts their weights, so a published model can be
attacked with every attack of jaxadv, compiled, on any JAX device.

This notebook goes through the whole path with RobustBench's own `WideResNet`
class: build it in PyTorch, convert its `state_dict()` with `zoo.from_torch`,
check that both compute the same logits, and run `jaxadv.evaluate`.

**The weights here are random**, because checkpoints cannot be downloaded where
this notebook is built. Every accuracy below is therefore meaningless as a
statement about robustness: it only shows that the pipeline runs. Real
checkpoints come from RobustBench (see the end), and the code stays the same.""",
    SETUP,
    """md:RobustBench's architecture files import only PyTorch, but importing the
`robustbench` package pulls in torchvision and timm. So we load the one file we
need by its path (`pip install --no-deps robustbench` is enough).""",
    '''import importlib.util
from pathlib import Path

import torch

from jaxadv import zoo


def robustbench_architecture(name):
    """robustbench/model_zoo/architectures/<name>.py, loaded without importing robustbench."""
    found = importlib.util.find_spec("robustbench")
    if found is None:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / "model_zoo" / "architectures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"rb_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wide_resnet = robustbench_architecture("wide_resnet")
print("RobustBench architecture file:", "found" if wide_resnet is not None else "not installed")''',
    """md:The smallest WideResNet, depth 10 and width 1 (the leaderboards use 28-10,
34-10, 70-16; the conversion is the same). Random weights, and random
batch-norm statistics so that the running means and variances are exercised
as a trained model's would be. Without `robustbench` installed, the cell
writes a state dict in the same layout from a zoo model instead.""",
    """torch.manual_seed(0)
if wide_resnet is not None:
    torch_model = wide_resnet.WideResNet(depth=10, widen_factor=1).eval()
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    state_dict = torch_model.state_dict()
else:  # the same keys and layouts, written out from a Flax twin
    from flax import traverse_util

    twin = zoo.build("wrn-10-1")
    flat = traverse_util.flatten_dict(twin.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    names = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    state_dict = {}
    for (_, *path, leaf), value in flat.items():
        value = np.asarray(value)
        if leaf == "kernel":  # HWIO -> OIHW, [in, out] -> [out, in]
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        state_dict[".".join([*path, names.get(leaf, leaf)])] = torch.from_numpy(value.copy())
    torch_model = None

print(f"{len(state_dict)} tensors, e.g. {list(state_dict)[:3]}")""",
    """md:`zoo.from_torch` reads the checkpoint (a state dict, a module, or a `.pt`
path), builds the Flax module and converts every tensor: convolution kernels
`OIHW -> HWIO`, linear weights transposed, batch-norm statistics into
`batch_stats`. What the checkpoint decides (here: the number of classes and
whether the classifier has a bias) is read from it.""",
    """module, variables = zoo.from_torch("wrn-10-1", state_dict)
logits_fn = jaxadv.from_flax(module, variables)
n_params = sum(a.size for a in jax.tree.leaves(variables["params"]))
print(f"{type(module).__name__}(depth={module.depth}, width={module.width}, "
      f"num_classes={module.num_classes}): {n_params:,} parameters")""",
    """md:Both models on the same 8 random 32x32x3 images in $[0, 1]$. JAX takes
NHWC images, PyTorch NCHW; the logits must agree up to float32 rounding.""",
    """x = np.random.default_rng(0).uniform(0.0, 1.0, (8, 32, 32, 3)).astype(np.float32)
ours = np.asarray(logits_fn(x))
if torch_model is not None:
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
else:
    theirs = np.asarray(twin.apply(twin.init(jax.random.key(0), x[:1]), x))
gap = np.abs(ours - theirs).max() / np.abs(theirs).max()
print(f"largest logit difference, relative to the largest logit: {gap:.1e}")

fig, ax = plt.subplots(figsize=(4.2, 4))
ax.scatter(theirs.ravel(), ours.ravel(), s=12)
lims = [min(theirs.min(), ours.min()), max(theirs.max(), ours.max())]
ax.plot(lims, lims, color="gray", lw=0.8, ls="--")
ax.set_xlabel("PyTorch logit")
ax.set_ylabel("JAX logit (converted)")
ax.set_title("8 inputs x 10 classes")
fig.tight_layout()
plt.show()""",
    """md:Now the evaluation. There are no true labels for random images, so the
labels are the model's own predictions: clean accuracy is 100% by
construction, and robust accuracy is the fraction of inputs whose prediction
no attack of the suite could change within $\\epsilon = 8/255$ (L-inf, the
CIFAR-10 leaderboard's threat model). `suite="fast"` is PGD-20 with the
cross-entropy, then PGD-50 with the CW margin loss on what survives: a quick
first look; `suite="standard"` is the AutoAttack-style evaluation to report.
The gradient-masking checks (`checks=True`, the default) run more attacks;
they are off here to keep the notebook quick.""",
    """y = np.asarray(jaxadv.predict(logits_fn, x))
print("predicted classes:", y)
result = jaxadv.evaluate(logits_fn, x, y, eps=8 / 255, suite="fast", key=jax.random.key(0),
                         progress=False, checks=False)
print(result.summary())""",
    """md:Again: the weights are random, so these accuracies say nothing about any
published model. An untrained network maps every noise image to nearly the
same logits (here it predicts one class for all 8), with small margins between
the classes; whether an attack within $8/255$ flips such a prediction tells
nothing about a trained one.

**Real checkpoints.** With the `robustbench` package installed in full (it
needs torchvision and timm), `robustbench.utils.load_model` downloads an
entry and returns the PyTorch model:

```python
from robustbench.utils import load_model

torch_model = load_model(model_name="Carmon2019Unlabeled", dataset="cifar10", threat_model="Linf")
module, variables = zoo.from_torch("wrn-28-10", torch_model.state_dict())
```

`zoo.from_torch` also reads the downloaded `.pt` files themselves
(`models/<dataset>/<threat_model>/<name>.pt`). The names of the architectures,
which RobustBench entry uses which, and how normalisation is handled are in
the documentation's model zoo page. For the large models (WRN-70-16 and up)
pass `remat=True` to `from_torch` and `batch_size="auto"` to `evaluate`
(the scaling page explains both).""",
]

# --------------------------------------------------------------------------- 09

NB09 = [
    """md:# 9. Minimal perturbations and sparse attacks

The attacks of the earlier notebooks answer one question per run: *is there an
adversarial example within $\\epsilon$?* This notebook asks two others.

* **How far is the nearest adversarial example?** A *minimal-norm* attack
  returns, per example, the smallest perturbation it can find, whatever its
  size. The distances $r_i$ of all examples give the robust accuracy at every
  $\\epsilon$ at once,
  $$\\mathrm{acc}(\\epsilon) = \\tfrac1n \\textstyle\\sum_i \\mathbb{1}[r_i > \\epsilon],$$
  a *security evaluation curve*.
* **How few pixels must change?** *Sparse* attacks bound the number of changed
  pixels, the $L_0$ "norm", instead of how much each one changes.

The last two sections move from one example to a whole dataset: a **universal
perturbation**, one $\\delta$ added to every input, and an **adversarial
patch**, one small image pasted anywhere.""",
    SETUP,
    SHOW_DIGITS,
    TRAIN_CNN,
    """md:## Security evaluation curves

`jaxadv.evaluation.minimal_eps` returns the per-example radius $r_i$ (0 for a
digit that is already misclassified, `inf` where the attack fails). It gets it
in one of two ways:

* one run of a minimal-norm attack: **FMN** (fast minimum-norm, `jaxadv.fmn`),
  which shrinks or grows a radius around each example while stepping along the
  gradient, or **FAB** (`jaxadv.fab`), which steps towards the nearest
  linearised decision boundary;
* a **binary search** over $\\epsilon$ with a fixed-radius attack (PGD, the
  default): here ten PGD-20 runs, each at the middle of every example's
  current interval.

`accuracy_curve(radii, eps_grid)` turns the radii into the curve. We run the
three on the first 100 test digits, in $L_2$ and $L_\\infty$.""",
    """ev = jaxadv.evaluation
n = 100
xe, ye = x[:n], y[:n]
key = jax.random.key(0)
eps_max = {"l2": 3.0, "linf": 0.5}  # the binary search starts from [0, eps_max]

radii = {}
for norm in ("l2", "linf"):
    radii[norm] = {
        "FMN": ev.minimal_eps(logits_fn, xe, ye, attack="fmn", norm=norm, steps=100),
        "FAB": ev.minimal_eps(logits_fn, xe, ye, attack="fab", norm=norm, key=key, steps=100),
        "PGD-20, binary search": ev.minimal_eps(
            logits_fn, xe, ye, norm=norm, key=key, eps_max=eps_max[norm], steps=20, iterations=10
        ),
    }
    # The smallest radius any of the three found: the tightest curve.
    radii[norm]["smallest of the three"] = np.min(np.stack(list(radii[norm].values())), axis=0)

for norm, found in radii.items():
    print(f"{norm}: median radius " + ", ".join(f"{name} {np.median(r):.3f}" for name, r in found.items()))""",
    """grids = {"l2": np.linspace(0.0, 1.5, 31), "linf": np.linspace(0.0, 0.3, 31)}
for norm, found in radii.items():
    curves = {name: ev.accuracy_curve(r, grids[norm]) for name, r in found.items()}
    ev.plot_accuracy_vs_eps(grids[norm], curves, norm=norm, title=f"Security evaluation curve, {norm}")
    plt.show()""",
    """for norm, at in (("l2", 0.5), ("linf", 0.1)):
    print(f"{norm}, eps={at}: robust accuracy " + ", ".join(
        f"{name} {float(ev.accuracy_curve(r, [at])[0]):.0%}" for name, r in radii[norm].items()))
    fmn, fab = radii[norm]["FMN"], radii[norm]["FAB"]
    print(f"    FMN found the smaller radius on {np.mean(fmn < fab):.0%} of the digits, FAB on {np.mean(fab < fmn):.0%}")""",
    """md:Every radius is the norm of an adversarial example that was found, so each
curve is an **upper bound** on the true robust accuracy at every $\\epsilon$,
exactly like the accuracy under a fixed-$\\epsilon$ attack; a closer adversarial
example may exist. The three curves lie close together, and the per-example
minimum over them, the tightest bound of the three, is barely below the best
single one (where two curves coincide, the one drawn last hides the other). Neither minimal-norm attack wins on every digit, which is why an
evaluation takes the per-example worst case over several attacks (notebook 5).

What changes is the cost. A fixed-$\\epsilon$ evaluation gives one point of the
curve per run; the binary search gives the whole curve for ten runs of PGD-20;
FMN and FAB give it for one run each, with no $\\epsilon$ to choose in advance.

## Sparse attacks: few pixels, changed a lot

An $L_0$ attack may set a pixel anywhere in $[0, 1]$, but only a few pixels.
Three of them, on the same 100 digits:

* **FMN** with `norm="l0"`: the same minimal-norm search with the fewest
  changed pixels as its norm, white-box.
* **Sparse-RS** (`jaxadv.sparse_rs`, `threat="l0"`): a score-based random
  search over sets of at most `k` pixels, each set to black or white. It only
  queries the model's scores, never a gradient.
* **JSMA** (`jaxadv.jsma`): the classic targeted attack; it raises pairs of
  pixels chosen from a saliency map of the Jacobian until the target class
  wins (here a random target per digit, and at most half of the pixels).""",
    """def changed_pixels(x_adv, x_ref):
    return np.sum(np.asarray(x_adv) != np.asarray(x_ref), axis=(1, 2, 3))

K = 3
targets = np.asarray(jaxadv.random_targets(key, ye, num_classes=10))
sparse = {
    "FMN, L0": jaxadv.fmn(logits_fn, xe, ye, norm="l0", steps=100, return_info=True),
    f"Sparse-RS, k={K}": jaxadv.sparse_rs(logits_fn, xe, ye, key=key, k=K, threat="l0", queries=1000, return_info=True),
    "JSMA, random target": jaxadv.jsma(logits_fn, xe, targets, targeted=True, gamma=0.5, return_info=True),
}
for name, res in sparse.items():
    ok = np.asarray(res.success)
    count = changed_pixels(res.x_adv, xe)[ok]
    print(f"{name:20s} success {ok.mean():5.0%}   changed pixels of 64: median {np.median(count):3.0f}, max {count.max():3d}")
queries = np.asarray(sparse[f"Sparse-RS, k={K}"].queries)[np.asarray(sparse[f"Sparse-RS, k={K}"].success)]
print(f"Sparse-RS queries per successful digit: median {np.median(queries):.0f}")""",
    '''def show_sparse(x_ref, rows, row_labels, titles, colors, suptitle):
    """Digits with their changed pixels outlined: clean on top, one attack per row below."""
    n_cols = len(x_ref)
    fig, axes = plt.subplots(len(rows) + 1, n_cols, figsize=(1.35 * n_cols, 1.5 * (len(rows) + 1) + 0.4), squeeze=False)
    for r, imgs in enumerate([x_ref, *rows]):
        for c in range(n_cols):
            ax = axes[r, c]
            img, ref = np.asarray(imgs[c]).squeeze(), np.asarray(x_ref[c]).squeeze()
            ax.imshow(img, vmin=0, vmax=1, interpolation="nearest")
            for i, j in zip(*np.nonzero(img != ref)):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="crimson", lw=1.5))
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            ax.set_title(titles[r][c], fontsize=9, color=colors[r][c])
        axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    fig.suptitle(suptitle)
    fig.tight_layout()
    plt.show()


sel = np.arange(8)
rows, titles, colors = [], [[f"label {int(c)}" for c in ye[sel]]], [["black"] * len(sel)]
for name, res in sparse.items():
    x_adv = np.asarray(res.x_adv)[sel]
    pred = np.asarray(jaxadv.predict(logits_fn, x_adv))
    goal = targets[sel] if name.startswith("JSMA") else None
    rows.append(x_adv)
    titles.append([f"{p} ({n} px)" for p, n in zip(pred, changed_pixels(x_adv, xe[sel]))])
    colors.append(["crimson" if (p == g if goal is not None else p != t) else "black"
                   for p, g, t in zip(pred, goal if goal is not None else ye[sel], ye[sel])])
show_sparse(xe[sel], rows, ["clean", *sparse], titles, colors,
            "Sparse attacks: prediction (changed pixels); red: fooled, or target reached")
print("JSMA targets:", targets[sel])''',
    """md:A handful of pixels is enough for most digits. FMN, which reads the
gradient and searches for the minimum, needs the fewest on most of them;
Sparse-RS, with only the scores, still fools nearly every digit within its
budget of `k` pixels; JSMA needs more, since it must reach one particular class
and changes pixels two at a time. On 8x8 images a changed pixel is a large
change: these attacks do not hide, they show how little the model needs to
change its mind.

`minimal_eps` takes `norm="l0"` too: FMN's counts give the $L_0$ security
curve, accuracy against the number of pixels allowed to change, with the
Sparse-RS result as one point beside it.""",
    """l0 = ev.minimal_eps(logits_fn, xe, ye, attack="fmn", norm="l0", steps=100)
pixel_grid = np.arange(0, 11)
rs_acc = 1 - float(np.mean(np.asarray(sparse[f"Sparse-RS, k={K}"].success) | (np.asarray(jaxadv.predict(logits_fn, xe)) != ye)))
fig, ax = plt.subplots(figsize=(5.5, 4))
ax.step(pixel_grid, ev.accuracy_curve(l0, pixel_grid) * 100, where="post", marker="o", label="FMN, L0 (one run)")
ax.plot([K], [rs_acc * 100], "s", ms=9, color="crimson", label=f"Sparse-RS, k={K}")
ax.set_xlabel("pixels allowed to change ($L_0$)")
ax.set_ylabel("accuracy (%)")
ax.set_ylim(-2, 102)
ax.set_title("Security evaluation curve, L0")
ax.legend()
plt.show()
print(f"at {K} pixels: FMN {float(ev.accuracy_curve(l0, [K])[0]):.0%} accuracy, Sparse-RS {rs_acc:.0%}")""",
    """md:At `k` pixels the random search leaves fewer digits standing than FMN's
curve does: it fools some digits for which FMN's search stopped at a larger
count. A minimal-norm attack's radius is an upper bound on the true minimum in
$L_0$ as in any norm, and the per-example best of several attacks is again the
honest figure.""",
    """md:## One perturbation for every digit

A **universal adversarial perturbation** (Moosavi-Dezfooli et al., 2017) is a
single $\\delta$ with $\\|\\delta\\|_\\infty \\le \\epsilon$ that fools the model on
a large share of *all* inputs. `jaxadv.universal.universal_perturbation` finds
it by projected stochastic gradient ascent on the average loss over the
training digits (sign-SGD with step $\\epsilon/10$ by default). We measure it on
the held-out test digits, where it was never trained, next to a random
perturbation of the same norm: every pixel moved by $\\pm\\epsilon$ at random.""",
    """from jaxadv import universal

eps_u = 0.25
batches = [(train.x[i:i + 100], train.y[i:i + 100]) for i in range(0, len(train.y) - 99, 100)]
delta = universal.universal_perturbation(logits_fn, batches, eps=eps_u, epochs=5, key=key)
random_delta = eps_u * jax.random.rademacher(jax.random.key(1), delta.shape, dtype=jnp.float32)
print(f"L-inf norm: universal {float(jnp.abs(delta).max()):.2f}, random {float(jnp.abs(random_delta).max()):.2f}")
print(f"fooling rate on the {len(y)} test digits: universal {float(universal.fooling_rate(logits_fn, delta, x, y)):.1%}, "
      f"random signs {float(universal.fooling_rate(logits_fn, random_delta, x, y)):.1%}")
counts = np.bincount(np.asarray(jaxadv.predict(logits_fn, universal.apply_universal(x, delta))), minlength=10)
print("predicted classes under the universal perturbation:", dict(enumerate(counts.tolist())))""",
    """fig, ax = plt.subplots(figsize=(2.6, 2.6))
im = ax.imshow(np.asarray(delta).squeeze(), cmap="RdBu_r", vmin=-eps_u, vmax=eps_u, interpolation="nearest")
ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
ax.set_title(f"universal $\\\\delta$, eps={eps_u}", fontsize=10)
fig.colorbar(im, ax=ax, fraction=0.046)
plt.show()

sel = np.arange(10)
x_u = np.asarray(universal.apply_universal(x[sel], delta))
p_clean = np.asarray(jaxadv.predict(logits_fn, x[sel]))
p_u = np.asarray(jaxadv.predict(logits_fn, x_u))
show_digits(
    [x[sel], x_u],
    ["clean", "+ universal"],
    [[f"pred {p}" for p in p_clean], [f"pred {p}" for p in p_u]],
    "The same perturbation added to ten test digits",
    colors=[["black"] * len(sel), ["crimson" if p != c else "black" for p, c in zip(p_u, y[sel])]],
)""",
    """md:The universal perturbation fools far more digits than random signs of the
same size, on digits it never saw: it is not noise but a direction that many
inputs share. The class counts show where it sends them: most fooled digits
land in the same few classes, the regions that lie in that direction from much
of the data.

## An adversarial patch

A **patch** (Brown et al., 2017) gives up the bound on the size of each change
and bounds where the change is: a small square pasted onto the image,
anything inside it. `universal.adversarial_patch` trains one patch for a
target class over the training digits, each time at a random place, scale
(0.8 to 1.2) and rotation (up to 22.5 degrees), so that it works wherever it
lands (expectation over transformations). It returns the patch and a function
that pastes it.""",
    """target = 3
patch, apply_fn = universal.adversarial_patch(logits_fn, batches, target=target, size=5, key=key, epochs=5)
rate = universal.patch_success_rate(logits_fn, patch, x, y, target=target, key=jax.random.key(2))
print(f"{patch.shape[0]}x{patch.shape[1]} patch ({patch.shape[0] * patch.shape[1] / 64:.0%} of the image), "
      f"target {target}: the patched test digits predicted as {target}: {float(rate):.1%}")

fig, ax = plt.subplots(figsize=(1.8, 1.8))
ax.imshow(np.asarray(patch).squeeze(), vmin=0, vmax=1, interpolation="nearest")
ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
ax.set_title(f"patch for {target}", fontsize=10)
plt.show()

sel = np.nonzero(y != target)[0][:10]
x_p = np.asarray(apply_fn(x[sel], key=jax.random.key(3)))
p_p = np.asarray(jaxadv.predict(logits_fn, x_p))
show_digits(
    [x[sel], x_p],
    ["clean", "patched"],
    [[f"label {int(c)}" for c in y[sel]], [f"pred {p}" for p in p_p]],
    f"The patch at random places; red: predicted {target}",
    colors=[["black"] * len(sel), ["crimson" if p == target else "black" for p in p_p]],
)""",
    """md:How large must the patch be? `universal.success_by_patch_size` trains one
patch per side length and measures each on the test digits at random
placements, next to a random patch of the same size at the same placements.""",
    """rows = universal.success_by_patch_size(logits_fn, batches, x, y, target=target, sizes=[3, 4, 5], key=key, epochs=5)
for r in rows:
    print(f"side {r.size}: {r.area:4.0%} of the image, success {float(r.success_rate):6.1%} "
          f"(random patch {float(r.random_success_rate):5.1%})")

fig, ax = plt.subplots(figsize=(5.5, 4))
area = [100 * r.area for r in rows]
ax.plot(area, [100 * float(r.success_rate) for r in rows], marker="o", label="trained patch")
ax.plot(area, [100 * float(r.random_success_rate) for r in rows], marker="s", label="random patch")
for r, a in zip(rows, area):
    ax.annotate(f"{r.size}x{r.size}", (a, 100 * float(r.success_rate)), textcoords="offset points", xytext=(4, -12), fontsize=8)
ax.set_xlabel("patch area (% of the image)")
ax.set_ylabel(f"predicted as {target} (%)")
ax.set_ylim(-2, 102)
ax.set_title(f"Targeted patch success vs area (target {target})")
ax.legend()
plt.show()""",
    """md:A random patch of any of these sizes rarely produces the target: covering
part of a digit is not enough. The trained patch's success grows quickly with
its area. On 8x8 digits even the smallest of these patches covers a large share
of the image, and what it leaves visible of the digit still argues for the true
class.

## Summary

* `fmn` and `fab` return the smallest adversarial example they find; with
  `minimal_eps` and `accuracy_curve`, one run gives the whole security
  evaluation curve, an upper bound on robust accuracy at every $\\epsilon$.
* Sparse threat models count pixels: `fmn(norm="l0")` (white-box, minimal),
  `sparse_rs` (scores only, at most `k` pixels, or a patch or a frame with
  `threat=`) and `jsma` (targeted).
* `jaxadv.universal` attacks a whole dataset with one object: a universal
  perturbation (`universal_perturbation`, `fooling_rate`) or a patch
  (`adversarial_patch`, `patch_success_rate`, `success_by_patch_size`).""",
]

# --------------------------------------------------------------------------- 10

NB10 = [
    """md:# 10. Diagnosing a defence, example by example

Notebook 5 showed batch-level checks that say *something* is off with an
evaluation. This one asks the sharper question a reviewer of a defence paper
asks: **on which examples can the reported robustness not be trusted, and what
would fix the attack there?**

`evaluate(..., diagnose=True)` computes, for every example, six *indicators of
attack failure* (after Pintor et al., NeurIPS 2022). The suite's gradient
attacks keep a trace of their own iterates as they run (success, margin,
gradient); the rest takes one gradient and a few tiny random perturbations of
the input, and a short attack with the whole input box as its budget on the
examples left robust:

| indicator | what it saw | the fix it names |
|---|---|---|
| `silent_success` | an adversarial point was found but not returned | keep the best iterate, a stronger attack |
| `incomplete_optimization` | the loss still improving at the end | more steps, APGD |
| `unavailable_gradients` | zero, NaN or vanishing input gradients | BPDA, another loss, a black-box attack |
| `unstable_predictions` | tiny noise moves the output far more than the gradient predicts | EOT, BPDA |
| `unconstrained_failure` | even an unbounded attack fails | check the gradients before trusting any attack |
| `transfer_failure` | fools the surrogate, not the model | a closer surrogate, EOT |

`adaptive=True` then attacks the flagged examples again with those fixes and
reports both numbers. We build two "defences" of the digits CNN that hide their
gradients, watch the reported robust accuracy go up, and watch the indicators
and the adaptive re-attack bring it back down.""",
    SETUP,
    TRAIN_CNN,
    """n_eval, eps = 100, 0.15
xe, ye = x[:n_eval], y[:n_eval]
key = jax.random.key(0)
gradient_suite = ["apgd-ce", "apgd-t"]  # white-box only: what a gradient-masking defence fools
settings = dict(eps=eps, suite=gradient_suite, key=key, progress=False, checks=False)

undefended = jaxadv.evaluate(logits_fn, xe, ye, diagnose=True, **settings)
print(undefended.summary())""",
    """md:On the undefended CNN no indicator fires: the attacks worked, and the
figure is an honest upper bound.

## Defence 1: input quantisation

The first defence rounds every pixel down to one of five grey levels before the
CNN sees it. Its thresholds (0.2, 0.4, 0.6, 0.8) lie between the digits' pixel
values, so the clean accuracy barely moves. Its gradient is zero almost
everywhere: gradient attacks see a flat loss.""",
    """def five_levels(v):
    return jnp.minimum(jnp.floor(5 * v), 4) / 4

quantised_fn = jaxadv.from_apply(lambda p, v: model.apply(p, five_levels(v)), variables)
quantised = jaxadv.evaluate(quantised_fn, xe, ye, diagnose=True, **settings)
print(quantised.summary())""",
    """md:The suite reports the quantised model as far more robust than the
undefended one, and on nearly every example two indicators fire: the gradient
is unavailable, and even an attack free to move anywhere in the box fails. The
fix they name is BPDA: keep the quantisation on the forward pass and let the
gradient pass straight through it (`jaxadv.bpda`), then judge the examples on
the real model.""",
    """surrogate_fn = jaxadv.from_apply(lambda p, v: model.apply(p, jaxadv.bpda(five_levels)(v)), variables)
quantised_adaptive = jaxadv.evaluate(
    quantised_fn, xe, ye, adaptive=True, surrogate_fn=surrogate_fn, **settings
)
print(quantised_adaptive.summary())
through_bpda = jaxadv.evaluate(surrogate_fn, xe, ye, diagnose=True, **settings)
print(f"the same suite through BPDA: robust accuracy {through_bpda.robust_accuracy:.0%}, "
      f"indicators {through_bpda.indicator_counts()}")""",
    """md:Through BPDA the suite's figure falls, and the indicators clear: the
attack now has a gradient to follow. Quantisation is not worthless
(pixels far from every threshold cannot be moved across one within eps), but
most of its reported robustness was the attack's failure.

## Defence 2: random noise on the input

The second defence adds Gaussian noise to its input at every call: a randomised
model `logits_fn(x, key)`. A gradient attack that follows one random draw per
step (here APGD-CE, one draw) sees a noisy objective.""",
    """sigma = 0.1

def noisy_apply(params, inputs, noise_key):
    return model.apply(params, inputs + sigma * jax.random.normal(noise_key, inputs.shape))

noisy_fn = jax.tree_util.Partial(noisy_apply, variables)

def one_draw(f, xb, yb, *, key, eps, norm, bounds, randomized=False):
    return jaxadv.apgd(f, xb, yb, key=key, eps=eps, norm=norm, bounds=bounds, steps=100, randomized=randomized)

naive = [jaxadv.evaluation.SuiteAttack("apgd-ce-1draw", one_draw, randomized=True)]
noisy = jaxadv.evaluate(
    noisy_fn, xe, ye, eps=eps, suite=naive, key=key, progress=False, checks=False,
    randomized=True, adaptive=True,
)
print(noisy.summary())""",
    """md:Every example shows unstable predictions: the model is random, which
no attack changes, so this indicator describes the model rather than the
attack. It names EOT: the adaptive re-attack averages the gradient over 100
draws of the noise on the flagged examples the suite counted robust, and the
figure falls to about that of the undefended CNN.

## The numbers side by side""",
    """rows = {
    "undefended CNN": (undefended.robust_accuracy, undefended.robust_accuracy),
    "5-level quantisation": (quantised.robust_accuracy, quantised_adaptive.adaptive_robust_accuracy),
    f"input noise (sigma={sigma})": (noisy.robust_accuracy, noisy.adaptive_robust_accuracy),
}
fig, ax = plt.subplots(figsize=(7, 4))
width = 0.38
pos = np.arange(len(rows))
ax.bar(pos - width / 2, [100 * a for a, _ in rows.values()], width, label="reported by the suite")
ax.bar(pos + width / 2, [100 * b for _, b in rows.values()], width, label="after the adaptive re-attack")
ax.set_xticks(pos, list(rows))
ax.set_xlabel("model")
ax.set_ylabel(f"robust accuracy at eps={eps} (%)")
ax.set_ylim(0, 100)
ax.set_title("What the indicators caught")
ax.legend()
plt.show()
for name, (a, b) in rows.items():
    print(f"{name:28s} reported {a:6.1%}   adaptive {b:6.1%}")""",
    """md:## Summary

* `evaluate(..., diagnose=True)` flags, per example, where the attacks failed
  and why; `result.untrusted()` marks those examples, and the summary and the
  JSON report count them with the fix each indicator names.
* `evaluate(..., adaptive=True)` applies those fixes to the flagged examples
  (BPDA through `surrogate_fn`, EOT, more steps, a black-box attack) and keeps
  both figures: `robust_accuracy` (the suite's) and `adaptive_robust_accuracy`.
* `jaxadv.bpda(fn)` attacks through a non-differentiable layer; a randomised
  model needs EOT (`randomized=True`, `suite="rand"`).
* An indicator that stays on after its fix (unstable predictions of a random
  model) describes the model, not the attack: read it with the fix's result.""",
]

NOTEBOOKS: dict[str, list[str]] = {
    "01_fgsm_and_bim": NB01,
    "02_targeted_attacks": NB02,
    "03_black_box": NB03,
    "04_defending": NB04,
    "05_honest_evaluation": NB05,
    "06_composing": NB06,
    "07_certified_robustness": NB07,
    "08_robustbench_model": NB08,
    "09_minimal_and_sparse": NB09,
    "10_diagnosing_defences": NB10,
}


def make_notebook(cells: list[str]) -> object:
    """An nbformat v4 notebook from the cell sources (``"md:"`` prefix for Markdown)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, src in enumerate(cells):
        if src.startswith("md:"):
            cell = nbformat.v4.new_markdown_cell(src[3:])
        else:
            cell = nbformat.v4.new_code_cell(src)
        cell["id"] = f"cell-{i:02d}"
        nb.cells.append(cell)
    return nb


def execute(nb: object, *, timeout: int = 600) -> object:
    """Run every cell in a fresh kernel, in this folder; raises on the first failing cell."""
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(HERE)}},
    )
    client.execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="prefixes of the notebooks to build (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = parser.parse_args(argv)
    chosen = [n for n in NOTEBOOKS if not args.names or any(n.startswith(p) for p in args.names)]
    if not chosen:
        parser.error(f"no notebook matches {args.names}; known: {list(NOTEBOOKS)}")
    for name in chosen:
        nb = make_notebook(NOTEBOOKS[name])
        t0 = time.perf_counter()
        if not args.no_execute:
            execute(nb)
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, path)
        print(f"wrote {path.name} ({time.perf_counter() - t0:.0f}s, {path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
