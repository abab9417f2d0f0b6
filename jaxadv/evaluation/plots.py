"""Figures for evaluation reports (matplotlib, imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxadv.evaluation.certified import CertifiedResult


def plot_accuracy_vs_eps(
    eps_values: Sequence[float] | np.ndarray,
    curves: Mapping[str, Sequence[float] | np.ndarray],
    *,
    norm: str = "linf",
    path: str | os.PathLike[str] | None = None,
    title: str = "Robust accuracy vs eps",
) -> Any:
    """Line plot of accuracy against eps, one line per entry of ``curves``.

    Returns the matplotlib figure (saved to ``path`` when given).
    """
    fig, ax = _accuracy_axes()
    for name, acc in curves.items():
        ax.plot(np.asarray(eps_values), np.asarray(acc) * 100, marker="o", label=name)
    return _finish(fig, ax, f"eps ({norm})", title, path)


def _accuracy_axes() -> tuple[Any, Any]:
    """A figure with one axes for accuracy curves (percent on the y axis)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    return fig, ax


def _finish(fig: Any, ax: Any, xlabel: str, title: str, path: str | os.PathLike[str] | None) -> Any:
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_certified_accuracy(
    certified: CertifiedResult | Mapping[str, CertifiedResult],
    *,
    robust: Mapping[float, float] | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str = "Certified accuracy vs radius",
) -> Any:
    r"""Certified accuracy (a lower bound) against the radius, optionally with attack results.

    One step curve per :class:`~jaxadv.evaluation.CertifiedResult` (a mapping names
    several): for randomized smoothing the whole curve
    :math:`r \mapsto \mathrm{mean}(R_i \ge r)` from the per-example radii, for bound
    propagation the listed radii only; markers at the listed radii. ``robust`` maps
    a radius to an empirical robust accuracy (e.g. ``{eps: result.robust_accuracy}``
    from :func:`jaxadv.evaluate`, an upper bound), drawn as crosses.

    Returns the matplotlib figure (saved to ``path`` when given).
    """
    curves = {"certified": certified} if isinstance(certified, CertifiedResult) else dict(certified)
    fig, ax = _accuracy_axes()
    for name, res in curves.items():
        radii = res.radii
        if res.method == "smoothing":
            reached = res.radius[res.radius > 0]
            top = max(float(radii.max()), float(reached.max()) if reached.size else 0.0) * 1.05 or 1.0
            grid = np.unique(np.concatenate([[0.0], reached, radii, [top]]))
        else:
            grid = radii
        acc = np.asarray([res.accuracy_at(float(r)) for r in grid])
        (line,) = ax.step(grid, acc * 100, where="pre", label=f"{name} ({res.method})")
        ax.plot(radii, res.accuracy * 100, "o", color=line.get_color())
    if robust:
        eps = sorted(robust)
        label = "robust accuracy under attack (upper bound)"
        ax.plot(eps, [robust[e] * 100 for e in eps], "x", color="crimson", markersize=8, mew=2, label=label)
    norms = sorted({res.norm for res in curves.values()})
    return _finish(fig, ax, f"radius ({', '.join(norms)})", title, path)


def plot_examples(
    x: np.ndarray,
    x_adv: np.ndarray,
    pred_clean: Sequence[int] | np.ndarray,
    pred_adv: Sequence[int] | np.ndarray,
    *,
    num: int = 8,
    amplify: float | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str = "clean / adversarial / perturbation",
) -> Any:
    """A grid: clean images, adversarial images and amplified perturbations, with predictions.

    ``x`` and ``x_adv`` are ``[n, H, W]`` or ``[n, H, W, C]`` in ``[0, 1]``. The
    perturbation row is scaled to fill the grey range (or by ``amplify``).
    """
    import matplotlib.pyplot as plt

    x, x_adv = np.asarray(x, np.float32), np.asarray(x_adv, np.float32)
    num = min(num, x.shape[0])
    fig, axes = plt.subplots(3, num, figsize=(1.4 * num, 4.6), squeeze=False)
    delta = x_adv - x
    scale = amplify if amplify is not None else 0.5 / max(float(np.abs(delta).max()), 1e-12)

    def show(ax: Any, img: np.ndarray) -> None:
        img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])

    for i in range(num):
        show(axes[0, i], x[i])
        axes[0, i].set_title(f"pred {int(pred_clean[i])}", fontsize=9)
        show(axes[1, i], x_adv[i])
        axes[1, i].set_title(f"pred {int(pred_adv[i])}", fontsize=9, color="crimson")
        show(axes[2, i], 0.5 + scale * delta[i])
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("adversarial")
    axes[2, 0].set_ylabel(f"delta x{scale:.3g}")
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
