"""The loop of :func:`jaxadv.sparse_rs` (the algorithm is described in
:mod:`jaxadv.attacks.sparse_rs`): the schedule of the perturbed set's size, the
proposals for the L0, patch and frame threats, and the start point."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.compile import jit
from jaxadv.attacks.square import from_nhwc
from jaxadv.compose.bookkeeping import QueryCount, charge
from jaxadv.keys import draw_rows, fold_rows, split_rows
from jaxadv.losses import as_onehot, finite_rows
from jaxadv.models import combine_model
from jaxadv.success import hits, stop_mask
from jaxadv.typing import Array, LossFn

_P_INIT = {"l0": (0.3, 0.1), "patch": (0.4, 0.1), "frame": (0.5, 0.5)}
# The corner index of a pixel's colour is an int32 of C bits: drawn exactly for C <= 16.
_MAX_EXACT_CHANNELS = 16
# Squares drawn to initialise a patch (the reference's "random_squares" start).
_PATCH_INIT_SQUARES = 1000


# --- schedules -----------------------------------------------------------------
#
# The reference's schedules are functions of the rescaled iteration
# r = floor(10000 it / n) (n: its budget). They are piecewise constant in r, so they
# are handed to the loop as a short table of pieces whose shape does not depend on
# the budget: a new ``queries`` does not recompile.


def _size_l0(r: int, k: int, p_init: float) -> int:
    r"""Pixels swapped: :math:`\max(\lfloor \alpha_r k \rfloor, 1)`."""
    div = 20
    for bound, d in (
        (0, 1),
        (50, 2),
        (200, 4),
        (500, 5),
        (1000, 6),
        (2000, 8),
        (4000, 10),
        (6000, 12),
        (8000, 15),
    ):
        if r <= bound:
            div = d
            break
    return max(int(p_init / div * k), 1)


def _size_patch(r: int, k: int, p_init: float) -> int:
    r"""Side of the recoloured square: :math:`\max(\lfloor \sqrt{\alpha_r} k \rfloor, 1)`."""
    halvings = sum(r > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return int(max((p_init / 2**halvings) ** 0.5 * k, 1))


def _size_frame(r: int, k: int, p_init: float) -> int:
    r"""Side of the recoloured square: :math:`\max(3 \lceil \max(0.5 - r/10^4, 0)\,\alpha k^2 \rceil, 1)`."""
    return max(3 * math.ceil(max(((10000 - r) / 10000 - 0.5) * p_init * k**2, 0.0)), 1)


_SIZES = {"l0": _size_l0, "patch": _size_patch, "frame": _size_frame}


class _Schedule(NamedTuple):
    """``size`` at iteration ``it`` is ``sizes[j]`` for the last ``j`` with ``starts[j] <= it``
    (``[P]`` int32, ``P`` fixed by the threat, ``k`` and ``p_init``); ``n``: the reference's
    budget ``queries - 1``; ``single_start``: the first iteration of single-channel updates."""

    starts: Array
    sizes: Array
    n: Array
    single_start: Array


def _pieces(threat: str, k: int, p_init: float) -> int:
    if threat == "frame":
        return math.ceil(0.5 * p_init * k**2) + 2
    return 10


def _schedule(threat: str, queries: int, k: int, pixels: int, p_init: float) -> _Schedule:
    """The schedule of update sizes (pixels swapped for ``"l0"``, at most ``min(k, H W - k)``
    or ``k`` when ``k = H W``; else the side of the recoloured square) over the reference's
    budget ``n = queries - 1`` (its count leaves out the clean input, our first query)."""
    n = queries - 1
    size = _SIZES[threat]
    room = min(k, pixels - k) if pixels > k else k
    starts: list[int] = []
    sizes: list[int] = []
    for r in range(10000):
        s = min(size(r, k, p_init), room) if threat == "l0" else size(r, k, p_init)
        if not sizes or s != sizes[-1]:
            starts.append(-(-r * n // 10000))  # the first iteration whose rescaled r is >= r
            sizes.append(s)
    # The reference starts single-channel updates halfway between the first one-pixel
    # update (or the last iteration when there is none) and the end of the budget.
    first = next((st for st, s in zip(starts, sizes, strict=True) if s == 1 and st < n), n - 1)
    pad = _pieces(threat, k, p_init) - len(starts)
    assert pad >= 0, (threat, k, p_init, len(starts))
    return _Schedule(
        jnp.asarray(starts + [np.iinfo(np.int32).max] * pad, jnp.int32),
        jnp.asarray(sizes + [1] * pad, jnp.int32),
        jnp.asarray(n, jnp.int32),
        jnp.asarray(first + (n - first) // 2, jnp.int32),
    )


def _size_at(it: Array, schedule: _Schedule) -> Array:
    return schedule.sizes[jnp.sum(schedule.starts <= it) - 1]


# --- colours -------------------------------------------------------------------


def _corner_index(bits: Array) -> Array:
    """``[...]`` int32 index :math:`\\sum_c b_c 2^c` of the corner ``bits [..., C]``
    (-1 when ``C`` is too large for an exact index)."""
    ch = bits.shape[-1]
    if ch > _MAX_EXACT_CHANNELS:
        return jnp.full(bits.shape[:-1], -1, jnp.int32)
    weights = jnp.left_shift(1, jnp.arange(ch, dtype=jnp.int32))
    return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1)


def _below(u: Array, count: Any) -> Array:
    """An int32 uniform in ``[0, count)`` from a uniform ``u`` in ``[0, 1)`` (``count >= 1``)."""
    return jnp.minimum(jnp.floor(u * count).astype(jnp.int32), jnp.asarray(count, jnp.int32) - 1)


def _draw_corners(key: Array, u: Array, channels: int, exclude: Array) -> Array:
    """Random corner bits ``[*u.shape, C]``, uniform over the :math:`2^C` corners, or
    over the other :math:`2^C - 1` where ``exclude >= 0`` (the corner of that index
    is never drawn: the reference's "a colour different from the current one").
    ``u``: uniforms in ``[0, 1)``, one per colour.

    For ``C > 16`` the channels are drawn from ``key`` (``[b]`` keys, one per row of
    ``u``) without exclusion (a repeat has probability at most :math:`2^{-16}`)."""
    if channels > _MAX_EXACT_CHANNELS:
        shape = (*u.shape[1:], channels)
        return draw_rows(lambda k: jax.random.bernoulli(k, 0.5, shape), key)
    ex = exclude >= 0
    r = _below(u, (1 << channels) - ex.astype(jnp.int32))
    r = r + (ex & (r >= exclude)).astype(jnp.int32)
    return (jnp.right_shift(r[..., None], jnp.arange(channels, dtype=jnp.int32)) & 1).astype(bool)


def _render(bits: Array, lo: Array, hi: Array) -> Array:
    return jnp.where(bits, hi, lo)


# --- loss ----------------------------------------------------------------------


def _objectives(z: Array, labels: Array, targeted: bool, loss: LossFn) -> tuple[Array, Array]:
    r"""``(hit, loss)``: ``hit`` is success (:func:`jaxadv.success.hits`); the attack
    minimises ``loss(z, onehot)`` untargeted (e.g. the margin
    :math:`z_y - \max_{j\ne y} z_j` or :math:`-\mathrm{CE}(z, y)`) and ``-loss(z, onehot)``
    targeted (:math:`\max_{j\ne t} z_j - z_t` or :math:`\mathrm{CE}(z, t)`); the losses
    are ascended, as in every attack. NaN where the scores are not finite (never lower)."""
    onehot = as_onehot(labels, z.shape[-1])
    value = loss(z, onehot) * (1.0 if targeted else -1.0)
    return hits(z, labels, targeted), jnp.where(finite_rows(z), value, jnp.nan)


# --- the search ----------------------------------------------------------------


class _State(NamedTuple):
    """``bits``: corner bits, ``[b, H, W, C]`` (``"l0"``, ``"frame"``) or ``[b, k, k, C]``
    (``"patch"``); ``on``: ``[b, H, W]`` perturbed pixels (``"l0"``: exactly ``k`` of
    them; ``"frame"``: the frame); ``loc``: ``[b, 2]`` patch corner; ``moved``: the
    example is at its perturbation (else at ``x``); ``loss``: its loss; ``tally``: the
    books of a score-based attack (:class:`jaxadv.compose.QueryCount`: each example's
    key chain, whether it has stopped, a success or clean scores not finite, and the
    evaluations it spent)."""

    bits: Array
    on: Array
    loc: Array
    moved: Array
    loss: Array
    tally: QueryCount


class _Operands(NamedTuple):
    params: Any
    x: Array  # [b, H, W, C] float32
    labels: Array
    lo: Array  # scalars, or [b, H, W, C]: lo and hi broadcast to x
    hi: Array
    x_corner: Array  # [b, H, W] int32 corner index of x's pixel, -1 when not at a corner
    frame_rc: Array  # [F, 2] int32 (row, column) of the frame pixels ("frame"; else [1, 2])
    schedule: _Schedule


class _Static(NamedTuple):
    model: Any
    threat: str
    k: int
    targeted: bool
    loss: LossFn
    layout: str
    move_every: int  # "patch": the location is updated every `move_every`-th iteration


def _patch_pixels(bits: Array, loc: Array, ops: _Operands) -> tuple[Array, Array]:
    """Place each example's ``[k, k, C]`` patch at its corner ``loc``: the ``[b, H, W]``
    window and ``[b, H, W, C]`` corner bits (False outside the window)."""
    b, h, w, ch = ops.x.shape
    k = bits.shape[1]

    def place(p: Array, at: Array) -> Array:
        return jax.lax.dynamic_update_slice(jnp.zeros((h, w, ch), bool), p, (at[0], at[1], 0))

    rows = jnp.arange(h)[None, :, None] - loc[:, 0, None, None]
    cols = jnp.arange(w)[None, None, :] - loc[:, 1, None, None]
    window = (rows >= 0) & (rows < k) & (cols >= 0) & (cols < k)
    return window, jax.vmap(place)(bits, loc)


def _image(state: _State, ops: _Operands, static: _Static) -> Array:
    """The ``[b, H, W, C]`` point of ``state`` (``x`` where the example has not moved)."""
    if static.threat == "patch":
        on, bits = _patch_pixels(state.bits, state.loc, ops)
    else:
        on, bits = state.on, state.bits
    moved = state.moved[:, None, None] & on
    return jnp.where(moved[..., None], _render(bits, ops.lo, ops.hi), ops.x)


def _pick(u: Array, among: Array, count: int, m: Array) -> Array:
    """``[b, n]`` bool: ``m`` pixels drawn uniformly without replacement, per example,
    from the ``True`` entries of ``among [b, n]`` (which has at least ``count >= m`` of
    them): the ``m`` largest of the uniform scores ``u [b, n]`` over ``among``."""
    score = jnp.where(among, u, -1.0)
    # The rank of each score in its row (ties: the lower index first, as lax.top_k).
    # Sorts along the pixels, not lax.top_k and a scatter, which XLA partitions by
    # gathering the whole batch on every device when the batch is sharded.
    order = jnp.argsort(-score, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)
    limit = jnp.minimum(jnp.asarray(m), count)
    return rank < (limit[:, None] if limit.ndim == 1 else limit)


def _propose_l0(key: Array, state: _State, ops: _Operands, static: _Static, it: Array) -> _State:
    """Swap ``m`` perturbed pixels back to ``x`` for ``m`` unperturbed ones set to random
    corners (a colour other than ``x``'s when ``m = 1``); with ``k = H W`` recolour ``m``."""
    b, h, w, ch = ops.x.shape
    n, k, m = h * w, static.k, _size_at(it, ops.schedule)
    u = jnp.moveaxis(draw_rows(lambda k: jax.random.uniform(k, (3, n)), key), 1, 0)
    on = state.on.reshape(b, n)
    if n > k:
        turn_off = _pick(u[0], on, k, m)
        turn_on = _pick(u[1], ~on, min(k, n - k), m)
        new_on = (on & ~turn_off) | turn_on
        current = ops.x_corner.reshape(b, n)
    else:
        turn_on = _pick(u[0], on, k, m)
        new_on = on
        current = _corner_index(state.bits).reshape(b, n)
    exclude = jnp.where(m == 1, current, -1)
    colours = _draw_corners(key, u[2], ch, exclude)
    bits = jnp.where(turn_on[..., None], colours, state.bits.reshape(b, n, ch))
    return state._replace(bits=bits.reshape(b, h, w, ch), on=new_on.reshape(b, h, w))


def _new_colour(key: Array, u: Array, current: Array, size: Array, single: Array) -> Array:
    """``[b, C]`` colour of an updated square: a random corner; for a one-pixel update a
    corner other than ``current [b, C]``; in the single-channel phase ``current`` with
    one random channel flipped. ``u``: ``[b, 2]`` uniforms."""
    ch = current.shape[-1]
    exclude = jnp.where(size == 1, _corner_index(current), -1)
    drawn = _draw_corners(key, u[:, 0], ch, exclude)
    flip = _below(u[:, 1:2], ch) == jnp.arange(ch)[None, :]
    return jnp.where(single, current ^ flip, drawn)


def _pixel_at(bits: Array, rc: Array) -> Array:
    """``[b, C]``: the pixel ``bits[i, rc[i, 0], rc[i, 1]]`` of each example, by a mask,
    not a gather (which XLA partitions by gathering a sharded batch on every device)."""
    rows = jnp.arange(bits.shape[1])[None, :, None] == rc[:, 0, None, None]
    cols = jnp.arange(bits.shape[2])[None, None, :] == rc[:, 1, None, None]
    return jnp.any(bits & (rows & cols)[..., None], axis=(1, 2))


def _propose_patch(key: Array, state: _State, ops: _Operands, static: _Static, it: Array) -> _State:
    """Either move the patch by up to ``shift`` :math:`= \\lfloor 0.75 H (n - it) / n \\rfloor`
    pixels per axis (every 4th iteration, 10th when targeted, while ``shift > 0``) or
    recolour a random square of side ``size`` inside it with one corner colour."""
    b, h, w, ch = ops.x.shape
    k, sched = static.k, ops.schedule
    size, single = _size_at(it, sched), it >= sched.single_start
    shift = (3 * h * jnp.maximum(sched.n - it, 0)) // (4 * sched.n)
    update_loc = (it % static.move_every == 0) & (shift > 0)
    u = draw_rows(lambda k: jax.random.uniform(k, (6,)), key)
    at = _below(u[:, 0:2], k - size + 1)
    current = _pixel_at(state.bits, at)
    colour = _new_colour(key, u[:, 2:4], current, size, single)
    r = jnp.arange(k)[None, :, None] - at[:, 0, None, None]
    c = jnp.arange(k)[None, None, :] - at[:, 1, None, None]
    square = ((r >= 0) & (r < size) & (c >= 0) & (c < size))[..., None]
    bits = jnp.where(square, colour[:, None, None, :], state.bits)
    moved = state.loc + _below(u[:, 4:6], 2 * shift + 1) - shift
    moved = jnp.clip(moved, 0, jnp.asarray([h - k, w - k], jnp.int32))
    return state._replace(
        bits=jnp.where(update_loc, state.bits, bits), loc=jnp.where(update_loc, moved, state.loc)
    )


def _propose_frame(key: Array, state: _State, ops: _Operands, static: _Static, it: Array) -> _State:
    """Recolour the part inside the frame of a ``size x size`` square with one corner at
    a random frame pixel, extending up or down and left or right at random."""
    b, h, w, ch = ops.x.shape
    size, single = _size_at(it, ops.schedule), it >= ops.schedule.single_start
    u = draw_rows(lambda k: jax.random.uniform(k, (5,)), key)
    start = ops.frame_rc[_below(u[:, 0], ops.frame_rc.shape[0])]
    direction = jnp.where(u[:, 1:3] < 0.5, -1, 1)
    current = _pixel_at(state.bits, start)
    colour = _new_colour(key, u[:, 3:5], current, size, single)
    dr = (jnp.arange(h)[None, :, None] - start[:, 0, None, None]) * direction[:, 0, None, None]
    dc = (jnp.arange(w)[None, None, :] - start[:, 1, None, None]) * direction[:, 1, None, None]
    square = (dr >= 0) & (dr < size) & (dc >= 0) & (dc < size) & state.on
    return state._replace(bits=jnp.where(square[..., None], colour[:, None, None, :], state.bits))


_PROPOSALS = {"l0": _propose_l0, "patch": _propose_patch, "frame": _propose_frame}


def _body(i: Array, state: _State, ops: _Operands, static: _Static) -> _State:
    chain, k_prop = split_rows(state.tally.key)
    # Iteration i is the reference's iteration i + 1 (its iteration 0 is the start point).
    proposal = _PROPOSALS[static.threat](k_prop, state, ops, static, i + 1)
    proposal = proposal._replace(moved=jnp.ones_like(state.moved))
    cand = from_nhwc(_image(proposal, ops, static), static.layout)
    z = combine_model(static.model, ops.params)(cand).astype(jnp.float32)
    hit, loss = _objectives(z, ops.labels, static.targeted, static.loss)
    count, active = charge(state.tally, chain, z, ops.labels, static.targeted, 1)
    lower = active & (loss < state.loss)
    # A success is kept even when its loss is not lower (the cross-entropy is not the margin).
    keep = lower | (active & hit)

    def choose(new: Array, old: Array) -> Array:
        return jnp.where(keep.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

    return _State(
        bits=choose(proposal.bits, state.bits),
        on=choose(proposal.on, state.on),
        loc=choose(proposal.loc, state.loc),
        moved=state.moved | keep,
        loss=jnp.where(lower, loss, state.loss),
        tally=count,
    )


def _init_patches(key: Array, b: int, k: int, ch: int) -> Array:
    """``[b, k, k, C]`` bits: the reference's "random squares" start, 1000 squares of
    side uniform in ``[1, max(ceil(sqrt(k)) - 1, 1)]`` at uniform positions, each filled
    with a random corner colour (later squares paint over earlier ones)."""
    top = max(math.ceil(k**0.5), 2)

    def paint(j: Array, bits: Array) -> Array:
        u = draw_rows(lambda kr: jax.random.uniform(kr, (3 + ch,)), fold_rows(key, j))
        size = 1 + _below(u[:, 0], top - 1)
        at = _below(u[:, 1:3], k - size[:, None] + 1)
        colour = u[:, 3:] < 0.5
        r = jnp.arange(k)[None, :, None] - at[:, 0, None, None]
        c = jnp.arange(k)[None, None, :] - at[:, 1, None, None]
        s = size[:, None, None]
        square = (r >= 0) & (r < s) & (c >= 0) & (c < s)
        return jnp.where(square[..., None], colour[:, None, None, :], bits)

    return jax.lax.fori_loop(0, _PATCH_INIT_SQUARES, paint, jnp.zeros((b, k, k, ch), bool))


def _frame_mask(h: int, w: int, k: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[:k], mask[h - k :], mask[:, :k], mask[:, w - k :] = True, True, True, True
    return mask


@functools.partial(jit, static_argnames=("static",))
def _init(key: Array, ops: _Operands, *, static: _Static) -> _State:
    """Evaluate the clean input (query 1), then the random start (query 2): ``k`` random
    pixels (``"l0"``) or the whole frame at random corners, or a random-squares patch at
    a random location. A start whose scores are not finite is not taken (the search
    continues from ``x``)."""
    logits_fn = combine_model(static.model, ops.params)
    b, h, w, ch = ops.x.shape
    k = static.k
    key, k_draw = split_rows(key)
    z0 = logits_fn(from_nhwc(ops.x, static.layout)).astype(jnp.float32)
    _, loss0 = _objectives(z0, ops.labels, static.targeted, static.loss)
    loc = jnp.zeros((b, 2), jnp.int32)
    if static.threat == "patch":
        on = jnp.zeros((b, 0, 0), bool)
        bits = _init_patches(k_draw, b, k, ch)
        u = draw_rows(lambda kr: jax.random.uniform(kr, (2,)), fold_rows(k_draw, _PATCH_INIT_SQUARES))
        loc = _below(u, jnp.asarray([h - k + 1, w - k + 1]))
    else:
        u = draw_rows(lambda kr: jax.random.uniform(kr, (h * w, 1 + ch)), k_draw)
        bits = (u[..., 1:] < 0.5).reshape(b, h, w, ch)
        if static.threat == "l0":
            on = _pick(u[..., 0], jnp.ones((b, h * w), bool), k, jnp.asarray(k)).reshape(b, h, w)
        else:
            on = jnp.broadcast_to(jnp.asarray(_frame_mask(h, w, k)), (b, h, w))
    none = QueryCount(key, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32))
    start = _State(bits, on, loc, jnp.ones((b,), bool), loss0, none)
    z1 = logits_fn(from_nhwc(_image(start, ops, static), static.layout)).astype(jnp.float32)
    hit1, loss1 = _objectives(z1, ops.labels, static.targeted, static.loss)
    clean_stop = stop_mask(z0, ops.labels, static.targeted)
    take = ~clean_stop & finite_rows(z1)
    return start._replace(
        moved=take,
        loss=jnp.where(take, loss1, loss0),
        tally=QueryCount(key, clean_stop | (take & hit1), jnp.where(clean_stop, 1, 2).astype(jnp.int32)),
    )


def _check_k(k: Any, threat: str, h: int, w: int) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a Python int (it sets shapes), got {k!r}")
    k = int(k)
    most = h * w if threat == "l0" else min(h, w)
    what = "pixels" if threat == "l0" else ("the patch side" if threat == "patch" else "the frame width")
    if not 1 <= k <= most:
        raise ValueError(f"k ({what}) must be in [1, {most}] for images of {h}x{w}, got {k}")
    return k
