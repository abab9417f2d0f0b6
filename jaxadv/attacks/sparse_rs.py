r"""Sparse-RS (Croce, Andriushchenko, Singh, Flammarion and Hein, AAAI 2022): score-based sparse attacks.

:func:`sparse_rs` searches, by random search on the model's scores only, for a
perturbation confined to a sparse set of pixels:

* ``"l0"``: at most ``k`` pixels (all channels of a pixel count as one);
* ``"patch"``: one ``k x k`` square patch, its location and content searched;
* ``"frame"``: a frame of width ``k`` along the image border, its content searched.

Every perturbed value sits at a corner of the box: channel ``c`` of a perturbed
pixel is either ``lo_c`` or ``hi_c``. The counting and stopping rules are those
of :mod:`jaxadv.attacks.blackbox`.

A perturbation is kept as *corner bits* (``True``: ``hi``, ``False``: ``lo``,
per pixel and channel) plus the set of pixels it covers, so a candidate is
always rendered from the clean input and never leaves its threat model.
"""

from __future__ import annotations

from typing import Literal, overload

import jax.numpy as jnp
import numpy as np

from jaxadv._core.problem import prepare
from jaxadv.attacks.blackbox import check_key, check_queries, empty_result, finish
from jaxadv.attacks.sparse_rs_loop import (
    _P_INIT,
    _body,
    _check_k,
    _corner_index,
    _frame_mask,
    _image,
    _init,
    _Operands,
    _schedule,
    _Static,
)
from jaxadv.attacks.square import from_nhwc, image_layout, to_nhwc
from jaxadv.callables import reraise_callable_errors
from jaxadv.engine import iterate
from jaxadv.keys import row_keys
from jaxadv.losses import get_loss
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, PRNGKey

__all__ = ["sparse_rs"]

THREATS = ("l0", "patch", "frame")


# The reference's default initial fractions (its README): (untargeted, targeted).
@overload
def sparse_rs(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    k: int,
    threat: str = "l0",
    queries: int = 1000,
    targeted: bool = False,
    p_init: float | None = None,
    loss: str | LossFn | None = None,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def sparse_rs(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    k: int,
    threat: str = "l0",
    queries: int = 1000,
    targeted: bool = False,
    p_init: float | None = None,
    loss: str | LossFn | None = None,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def sparse_rs(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    k: int,
    threat: str = "l0",
    queries: int = 1000,
    targeted: bool = False,
    p_init: float | None = None,
    loss: str | LossFn | None = None,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def sparse_rs(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    k: int,
    threat: str = "l0",
    queries: int = 1000,
    targeted: bool = False,
    p_init: float | None = None,
    loss: str | LossFn | None = None,
    bounds: Bounds = (0.0, 1.0),
    channel_axis: int = -1,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Sparse-RS (Croce et al., AAAI 2022): score-based random search for sparse perturbations.

    Minimises, per example, a loss :math:`L` of the scores (``loss="cw"``, the margin:
    :math:`z_y - \max_{j\ne y} z_j`, untargeted, or :math:`\max_{j\ne t} z_j - z_t`,
    targeted; ``loss="ce"``: :math:`-\mathrm{CE}(z, y)`, or :math:`\mathrm{CE}(z, t)`)
    over perturbations whose values are corners of the box (each channel at ``lo``
    or ``hi``), confined by the threat model:

    * ``"l0"``: at most ``k`` pixels of :math:`H \times W` (a pixel is all its
      channels). Start: ``k`` uniform pixels at uniform random corners. Each
      iteration swaps :math:`m` of the perturbed pixels (reset to ``x``) for
      :math:`m` unperturbed ones at random corners (a corner other than ``x``'s
      pixel when :math:`m = 1`), :math:`m = \max(\lfloor \alpha_t k \rfloor, 1)`,
      :math:`\alpha_t` = ``p_init`` divided by 2, 4, 5, 6, 8, 10, 12, 15, 20 after
      (rescaled) iterations 0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000.
    * ``"patch"``: a ``k x k`` patch at a searched location (uniform start; the
      reference's start range stops one short of the last row and column). Start:
      1000 small squares of random corner colours. Every 4th iteration (10th when
      targeted) moves the patch by up to :math:`\lfloor 0.75 (1 - t/n) H \rfloor`
      pixels per axis; the others set a random square of side
      :math:`\max(\lfloor\sqrt{\alpha_t}\,k\rfloor, 1)` inside it to one random corner
      colour, :math:`\alpha_t` = ``p_init`` halved after iterations 10, 50, 200, 500,
      1000, 2000, 4000, 6000, 8000 (of 10,000).
    * ``"frame"``: the pixels within ``k`` of the border. Start: all at random
      corners. Each iteration sets the frame part of a square of side
      :math:`\max(3\lceil \max(0.5 - t/n, 0)\,\alpha\,k^2 \rceil, 1)` at a random frame
      pixel (extending in random directions) to one random corner colour.

    Once updates are one pixel (patch, frame), the later half of the remaining
    budget flips one random channel of one pixel instead. A candidate replaces the
    current point when its loss is lower or it succeeds (:func:`jaxadv.success.hits`).
    Random draws are per example (the reference shares some across the batch).

    Queries: 1 for the clean input (already misclassified examples, and those
    with non-finite scores, stop there, returned unchanged), 1 for the start
    point, then 1 per iteration until the example succeeds; ``queries - 2``
    iterations run. The reference's count is ours minus 1 (it does not count
    the clean input); its schedule runs over a budget of ``queries - 1``.

    Args:
      logits_fn: the model, evaluated only (no gradient).
      x: ``[batch, H, W, C]`` (``channel_axis=-1``), ``[batch, C, H, W]``
        (``channel_axis=1``) or ``[batch, H, W]`` inputs inside ``bounds``.
      y: labels ``[batch]`` (targets when ``targeted``) or one-hot; ``None``:
        the model's predictions.
      key: PRNG key: one key, or a ``[batch]`` array of keys, one per example
        (:mod:`jaxadv.keys`); each example's proposals come from its own.
      k: the budget (static): pixels (``"l0"``, in ``[1, H W]``), the patch side
        or the frame width (in ``[1, min(H, W)]``).
      threat: ``"l0"``, ``"patch"`` or ``"frame"`` (static).
      queries: per-example budget of model evaluations (static, >= 2).
      targeted: minimise the loss towards the target and stop when it is predicted.
      p_init: :math:`\alpha_0` (static); ``None``: the reference's 0.3 (l0), 0.4
        (patch), 0.5 (frame), untargeted, or 0.1, 0.1, 0.5 targeted.
      loss: a name or a callable (:func:`jaxadv.losses.get_loss`; ``"cw"`` is the
        margin, ``"ce"`` the cross-entropy; static); ``None``: margin untargeted,
        cross-entropy targeted (the reference's choice).
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      channel_axis: ``-1`` or ``1`` for 4-D inputs (static).
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).
      return_info: return an :class:`jaxadv.AttackResult` ``(x_adv, success, queries)``:
        ``success`` re-predicted on ``x_adv``, ``queries`` ``[batch]`` int32.

    Returns:
      The adversarial batch, shape and dtype of ``x``, inside ``bounds`` and
      differing from ``x`` only on the threat model's pixels (an
      :class:`jaxadv.AttackResult` with ``return_info``).
    """
    if threat not in THREATS:
        raise ValueError(f"threat must be one of {THREATS}, got {threat!r}")
    loss_fn = get_loss(("ce" if targeted else "cw") if loss is None else loss)
    queries = check_queries(queries, 2)
    p_init = _P_INIT[threat][int(bool(targeted))] if p_init is None else float(p_init)
    if not (p_init > 0.0 and (threat == "frame" or p_init <= 1.0)):
        raise ValueError(f"p_init must be in (0, 1] ({threat!r}: > 0 for 'frame'), got {p_init}")
    check_key(key)
    p = prepare(logits_fn, x, y, bounds=bounds, targeted=targeted)
    layout = image_layout(p.x, channel_axis, "sparse_rs")
    xs = to_nhwc(p.x, layout)
    b, h, w, ch = xs.shape
    k = _check_k(k, threat, h, w)
    if p.empty:
        return empty_result(p, return_info=return_info)
    # Scalar bounds stay scalars; others are broadcast to x, then laid out as NHWC.
    lo = p.lo if p.lo.ndim == 0 else to_nhwc(jnp.broadcast_to(p.lo, p.x.shape), layout)
    hi = p.hi if p.hi.ndim == 0 else to_nhwc(jnp.broadcast_to(p.hi, p.x.shape), layout)
    at_corner = jnp.all((xs == lo) | (xs == hi), axis=-1)
    x_corner = jnp.where(at_corner, _corner_index(xs == hi), -1)
    frame_rc = np.argwhere(_frame_mask(h, w, k)) if threat == "frame" else np.zeros((1, 2))
    ops = _Operands(
        p.params, xs, p.labels, lo, hi, x_corner, jnp.asarray(frame_rc, jnp.int32),
        _schedule(threat, queries, k, h * w, p_init),
    )  # fmt: skip
    static = _Static(p.model, threat, k, bool(targeted), loss_fn, layout, 10 if targeted else 4)
    with reraise_callable_errors():
        state = _init(row_keys(key, p.x.shape[0]), ops, static=static)
        if queries > 2:
            state = iterate(_body, state, ops, steps=queries - 2, static=static, loop=loop)
        x_adv = from_nhwc(_image(state, ops, static), layout)
        return finish(p, x_adv, state.tally.queries, targeted=targeted, return_info=return_info)
