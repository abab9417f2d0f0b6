"""Robust accuracy under a suite of attacks, per example, over large datasets.

The driver: the arguments checked, then a loop over the batches that
:mod:`~jaxadv.evaluation.feeding` cuts, each attacked by
:mod:`~jaxadv.evaluation.batch`, with its size from :mod:`~jaxadv.evaluation.memory`
and its devices from :mod:`~jaxadv.evaluation.layout`, gathered by
:mod:`~jaxadv.evaluation.tally`; checkpoints, progress, certification, the
indicators of attack failure and the masking checks are steps of that loop.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxadv import sharding as shd
from jaxadv._core.randomised import fix_key
from jaxadv.evaluation.adaptive import AdaptiveReport, reattack
from jaxadv.evaluation.batch import _evaluate_batch, _Setting
from jaxadv.evaluation.certified import Certification, CertifiedStream
from jaxadv.evaluation.checkpoint import (
    DataHasher,
    SavedRun,
    check_data,
    check_same_run,
    read_checkpoint,
    run_fingerprint,
    write_checkpoint,
)
from jaxadv.evaluation.diagnostics import indicators as attack_failure_indicators
from jaxadv.evaluation.diagnostics import masking_checks
from jaxadv.evaluation.feeding import _Cutter, _FirstExamples, _pieces, _ReadAhead, _Size, _source
from jaxadv.evaluation.layout import _Layout
from jaxadv.evaluation.memory import _check_batch_size, _first_size, _halved, _out_of_memory
from jaxadv.evaluation.result import ROBUST, EvaluationResult
from jaxadv.evaluation.suites import SuiteAttack, check_suite_norm, resolve_suite
from jaxadv.evaluation.tally import _DIAGNOSED, _finalize, _indicator_flags, _non_finite_warnings, tally
from jaxadv.keys import example_keys, fold_rows, typed_key
from jaxadv.typing import ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_norm

#: Folded into the attacks' key, with the process index, for the examples of an
#: iterator read by one of several processes (their indices in the result are not
#: known in advance).
_PROCESS = 0x9E0C
_DIAGNOSE = 0xD1A6  # folded into each example's key for its indicators of attack failure


def _split_key(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    if key is None:
        raise ValueError("key is required: pass key=jax.random.key(0) (it seeds the attacks' randomness)")
    try:
        k = typed_key(key)
        k1, k2 = jax.random.split(k)
    except (TypeError, ValueError) as e:
        raise ValueError(f"key must be a PRNG key such as jax.random.key(0), got {key!r}") from e
    return k1, k2


def _reattack(
    result: EvaluationResult, flagged: list[tuple[np.ndarray, Any, Any, np.ndarray]], logits_fn: LogitsFn,
    **kw: Any,
) -> AdaptiveReport:  # fmt: skip
    """The adaptive re-attack of the flagged robust examples (:mod:`jaxadv.evaluation.adaptive`)."""
    fooled = np.zeros(result.num_examples, bool)
    if not flagged:
        return AdaptiveReport(fooled, {}, {})
    index = np.concatenate([f[0] for f in flagged])
    x = np.concatenate([np.asarray(f[1]) for f in flagged])
    y = np.concatenate([np.asarray(f[2]) for f in flagged])
    flags = np.concatenate([f[3] for f in flagged])
    hit, ran, won = reattack(
        logits_fn, x, y, {k: flags[:, i] for i, k in enumerate(_DIAGNOSED)}, evaluate=evaluate, **kw
    )
    fooled[index[hit]] = True
    return AdaptiveReport(fooled, ran, won)


def _flagged(
    flags: np.ndarray, fooled_by: np.ndarray, start: int, x: Any, y: Any
) -> list[tuple[np.ndarray, Any, Any, np.ndarray]]:
    """The examples ``start, start + 1, ...`` (inputs ``x``, labels ``y``, their
    ``[b, len(_DIAGNOSED)]`` indicator ``flags`` and ``fooled_by`` codes) counted
    robust with an indicator fired: kept for the adaptive re-attack."""
    rows = np.nonzero(flags.any(axis=1) & (fooled_by == ROBUST))[0]
    if rows.size == 0:
        return []
    return [(start + rows, np.asarray(x)[rows], np.asarray(y)[rows], flags[rows])]


def _diagnose_batch(
    logits_fn: LogitsFn, x: Any, y: Any, fooled: np.ndarray, keys: Any, *, eps: float, norm: Norm,
    bounds: Bounds, randomized: bool, trace: Any = None,
) -> np.ndarray:  # fmt: skip
    """``[b, len(_DIAGNOSED)]`` bool: the indicators of attack failure of a batch
    (from the suite's traces when it kept them)."""
    ind = attack_failure_indicators(
        logits_fn, jnp.asarray(x), jnp.asarray(y), eps=eps, key=fold_rows(keys, _DIAGNOSE), norm=norm,
        bounds=bounds, fooled=fooled, randomized=randomized, trace=trace,
    )  # fmt: skip
    return _indicator_flags(ind)


def _resume(path: Path, fingerprint: Any) -> SavedRun:
    saved = read_checkpoint(path)
    check_same_run(saved, fingerprint)
    return saved


def evaluate(
    logits_fn: LogitsFn,
    x: ArrayLike | Iterable[tuple[ArrayLike, ArrayLike]],
    y: ArrayLike | None = None,
    *,
    eps: float,
    norm: Norm = "linf",
    suite: str | Sequence[str | SuiteAttack] = "standard",
    key: PRNGKey,
    batch_size: int | Literal["auto"] = 256,
    max_batch_size: int = 1024,
    prefetch: int = 2,
    bounds: Bounds = (0.0, 1.0),
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    store_adversarial: bool = False,
    checks: bool = True,
    check_size: int = 128,
    sharding: Mesh | NamedSharding | bool | None = None,
    certify: Certification | None = None,
    randomized: bool = False,
    diagnose: bool = False,
    adaptive: bool = False,
    surrogate_fn: LogitsFn | None = None,
) -> EvaluationResult:
    r"""Robust accuracy of ``logits_fn`` under a suite of attacks (per-example worst case).

    An example counts as robust only if the model classifies it correctly and
    *every* attack of the suite fails on it, as in AutoAttack. Examples the
    model already misclassifies are not attacked; later attacks run only on
    the examples still robust. Success is decided by re-predicting the
    returned examples. Every returned example must lie in ``bounds`` and in the
    eps-ball, up to the rounding of its dtype (half an ulp per coordinate,
    which matters for bfloat16 and float16 inputs); an attack that leaves them
    raises. A candidate with a NaN or inf (in the example or in the model's
    logits on it) is a *failed* attack on its example, counted in
    ``result.non_finite`` and reported in ``result.warnings``. See
    :doc:`/numbers` for what each number means and when it is refused.

    Args:
      logits_fn: model ``x -> logits``.
      x: ``[n, ...]`` floating-point inputs (NumPy or JAX) inside ``bounds``, or
        an iterable of ``(x, y)`` NumPy batches of any sizes (then ``y=None``),
        e.g. a generator reading from disk, a Grain loader or tf.data's
        ``dataset.as_numpy_iterator()``. Its batches are cut and joined into
        batches of ``batch_size`` examples; the result depends on the examples
        and their order, never on how the iterator batches them (its batches
        must then share their per-example shape and dtype). Integer inputs
        (``uint8`` images) are refused: scale them, e.g. ``x / 255`` with
        ``bounds=(0, 1)``. NaN or inf is refused.
      y: ``[n]`` integer labels, or ``[n, C]`` one-hot rows (taken as their
        argmax), when ``x`` is an array. Float, string and out-of-range labels
        are refused.
      eps: radius, raw input units. norm: ``"linf"``, ``"l2"``, ``"l1"`` (any case:
        ``"Linf"``, ``"L2"``).
      suite: ``"standard"``, ``"plus"`` or ``"rand"`` (AutoAttack's versions:
        ``"standard"`` is APGD-CE, APGD-T, FAB-T and Square, in L1 in
        AutoAttack's L1 configurations; see :mod:`jaxadv.evaluation.suites`
        for every member and budget), ``"fast"`` (PGD-20 with cross-entropy then
        PGD-50 with the CW margin; every norm), or a list of names from
        :data:`jaxadv.evaluation.ATTACKS` and :class:`SuiteAttack`.
        A suite with a member that does not support ``norm`` is refused before
        anything runs.
      key: PRNG key. Each example gets its own fold of it, by its index in the
        data (:func:`jaxadv.example_keys`), then one fold per attack (by name):
        every random draw of an attack on an example comes from that key. An
        example's results therefore do not depend on the batch size, the
        number of devices, ``"auto"`` halving or a resume (see
        :doc:`/numbers` for the one proviso, the model's own arithmetic).
      batch_size: examples per compiled call: the data is cut into batches of
        this size; attacks run on the still-robust examples padded to a power
        of two (at most ``log2(batch_size) - 2`` compiled shapes). It changes
        speed and memory, not the results. ``"auto"``: the largest size that
        fits in device memory. The first batch is tried with
        ``max_batch_size`` examples (fewer when the data has fewer); when a
        batch fails with XLA's out-of-memory error (``RESOURCE_EXHAUSTED``)
        the size is halved and the same examples are evaluated again (none
        lost, none counted twice), on any batch. ``result.batch_size`` is the
        size the run ended with. With a sharding the size stays a multiple of
        the device count. Refused with several processes.
      max_batch_size: the first size ``batch_size="auto"`` tries.
      prefetch: batches read ahead by a background thread while the current
        one is attacked: taken from ``x``, checked, cut to ``batch_size`` and
        put on the devices (a bounded queue; ``0``: none, all in the calling
        thread). The results do not depend on it. An exception of the
        iterator is raised here when its turn comes, with its traceback; the
        thread ends before ``evaluate`` returns or raises (after a read of the
        iterator already under way).
      bounds: ``(lo, hi)`` valid input range.
      progress: show a progress bar (tqdm) on the terminal.
      checkpoint: JSON file written atomically after every batch with the
        partial result and the run's fingerprint (see
        :mod:`jaxadv.evaluation.checkpoint`), so that an interrupted run is not
        lost. An existing file is refused (a ``ValueError`` before anything
        runs) unless ``resume`` or ``overwrite`` says what to do with it. Nothing
        is written before the first batch ends: when all the examples of an
        array fit in one batch, a ``UserWarning`` says that the file protects
        nothing (pass a smaller ``batch_size``). This is evaluate's progress
        file, unrelated to the model's weights.
      resume: continue from ``checkpoint`` when it exists: its examples are
        skipped (their inputs and labels are still read and hashed). The file
        must belong to this run (same eps, norm, suite, key, bounds, model and
        first examples; any batch size may continue it, and
        ``batch_size="auto"`` continues with the checkpoint's size) and be
        intact, else a
        :class:`~jaxadv.evaluation.CheckpointError` names the problem and the
        file is left as it is. A complete checkpoint is returned as it is,
        warnings and checks included, without running anything. The result's
        ``wall_seconds`` then adds the sessions' times (``result.sessions``).
      overwrite: replace an existing ``checkpoint`` file, starting from the
        first example (without ``resume``, or with ``resume`` when the file
        does not exist).
      store_adversarial: keep the adversarial examples in ``result.x_adv``.
      checks: run the gradient-masking checks of
        :func:`jaxadv.evaluation.masking_checks` on the first ``check_size``
        examples and attach their warnings. A check that does not apply is
        skipped with a warning; a check that fails is reported as a warning and
        never costs the evaluated results.
      sharding: data parallelism. ``None`` (default): every attack and
        prediction runs on all devices, each batch split along its first axis
        (padded to a multiple of the device count), when there is more than one
        device; one device otherwise. ``True``: always split over all devices.
        ``False``: one device. A :class:`jax.sharding.Mesh` (its ``"batch"``
        axis) or a :class:`jax.sharding.NamedSharding`: split over it. With
        several processes (after :func:`jax.distributed.initialize`) each
        process passes *its own* examples, the same number of them (and of
        batches) on every process; the per-example results are gathered once,
        at the end, and every process receives the same result, holding the
        examples of process 0, then process 1, and so on; with array inputs an
        example's key is that of its index in this gathered result (the same
        as a single-process run on the concatenated data), with iterators it
        also folds in the process index. ``checkpoint`` and
        ``batch_size="auto"`` are then refused, and the masking checks run on
        each process's first examples.
      certify: also certify the same examples, from
        :func:`jaxadv.evaluation.smoothing` or
        :func:`jaxadv.evaluation.bound_propagation`: ``result.certified`` holds the
        certified accuracy (a lower bound) at each radius, beside the robust
        accuracy (an upper bound); the numbers of
        ``certified_accuracy(logits_fn, x, y, certify=certify, key=key, bounds=bounds)``
        on the same examples. Refused with ``checkpoint`` and with several processes.
      randomized: the model is randomised, ``logits_fn(x, key) -> logits`` (dropout
        left on, a random input transformation, noise): the attacks get the
        model itself and draw their own keys (use ``suite="rand"``, whose members
        average the gradient over 20 draws; a suite with a member that cannot
        attack a randomised model is refused), while every prediction of an
        example (clean, and of each attack's candidates) uses one draw of the
        model, keyed by the example. The model is called one example at a time
        (``logits_fn(x[i:i+1], key_i)`` under ``jax.vmap``), so that each
        example's draws come from its own key. The figure is then that draw's
        robust accuracy, as AutoAttack's ``"rand"`` version reports it;
        evaluate with several keys to see its spread. The masking checks see
        one fixed draw per example. Refused with ``certify``.
      diagnose: also compute, per example, the indicators of attack failure of
        :func:`jaxadv.evaluation.indicators` (each batch's examples, whether the
        suite fooled them, and their keys): ``result.indicators`` holds them,
        ``result.untrusted()`` the examples any of them flags, and the summary and
        the JSON report count them with the fix each one names. The suite's
        gradient members (PGD, APGD, APGD-T: ``SuiteAttack.traced``) keep a
        trace of their iterates, from which silent successes, incomplete
        optimisation and unavailable gradients are read; the rest costs one
        gradient and 4 forward passes per batch, and a 5-step box-only run on
        the examples left robust. A suite without a traced member, or a
        randomised model, gets a 20-step diagnostic attack per batch instead.
        With ``checkpoint``, a resumed run must diagnose as the interrupted one did.
      adaptive: diagnose, then attack each example counted robust on which an
        indicator fired again, with the fix its indicator names
        (:mod:`jaxadv.evaluation.adaptive`: more steps, EOT, BPDA through
        ``surrogate_fn``, a black-box attack). ``result.robust_accuracy`` stays the
        suite's figure; ``result.adaptive`` says what each fix ran on and fooled,
        and ``result.adaptive_robust_accuracy`` is the figure after them. With
        ``checkpoint``, a resumed run re-attacks the flagged examples of every
        session at the end (they are read again with the skipped examples), and
        a complete checkpoint written without ``adaptive`` gets its re-attack
        then. Refused with several processes.
      surrogate_fn: with ``adaptive``, a differentiable stand-in of the model for
        the BPDA fix (the model with :func:`jaxadv.bpda` around its
        non-differentiable layers): attacks run on it, success is judged on
        ``logits_fn``.

    Returns:
      An :class:`EvaluationResult`; ``result.robust_accuracy`` is the figure,
      ``result.batch_size`` the size used and ``result.examples_per_second``
      the throughput of the whole run.

    Raises:
      ValueError: a bad argument, input or label (the message names it and the fix).
      CheckpointError: with ``resume``, a damaged checkpoint or one from another run.
      RuntimeError: an attack returned examples outside the threat model.
      jax.errors.JaxRuntimeError: out of device memory with an int
        ``batch_size``, or with ``"auto"`` even for a batch of one example per
        device (a note says what to do).
    """
    norm = check_norm(norm)  # the canonical name of an alias such as "Linf"
    if not eps >= 0:  # NaN fails the comparison too
        raise ValueError(f"eps must be >= 0, got {eps}")
    if checkpoint is not None and Path(checkpoint).exists() and not (resume or overwrite):
        raise ValueError(
            f"checkpoint {checkpoint} exists (the progress file of an earlier run?): pass resume=True to "
            "continue that run, or overwrite=True to replace the file and start from the first example"
        )
    _check_batch_size(batch_size, max_batch_size)
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0 (batches read ahead), got {prefetch!r}")
    auto = batch_size == "auto"
    attacks = resolve_suite(suite, norm=norm)
    check_suite_norm(suite, attacks, norm)
    if randomized:
        cannot = [a.name for a in attacks if not a.randomized]
        if cannot:
            raise ValueError(
                f"randomized=True: {', '.join(cannot)} cannot attack a randomised model "
                "logits_fn(x, key); use suite='rand' or members built with SuiteAttack(randomized=True)"
            )
        if certify is not None:
            raise ValueError("certify cannot be combined with randomized=True")
    for flag, value in (("diagnose", diagnose), ("adaptive", adaptive)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    if surrogate_fn is not None and not adaptive:
        raise ValueError("surrogate_fn is used by the adaptive re-attack only: pass adaptive=True")
    if surrogate_fn is not None and not callable(surrogate_fn):
        raise ValueError(f"surrogate_fn must be a model logits_fn(x) -> logits, got {surrogate_fn!r}")
    diagnose = diagnose or adaptive
    names = [a.name for a in attacks]
    key_attacks, key_checks = _split_key(key)
    layout = _Layout(shd.resolve_batch_sharding(sharding))
    # An example's index: its position in the data (with several processes, in the
    # gathered result: process p's example i is p * n + i, n the examples per process).
    key_examples, index_offset = key_attacks, 0
    if layout.processes > 1 and auto:
        raise ValueError(
            "batch_size='auto' is not supported when several processes evaluate together "
            "(an out-of-memory error on one process would leave the others waiting): pass an int"
        )
    # Arrays are checked in slices of the size tried first (or given).
    first_size = int(max_batch_size if auto else cast(int, batch_size))
    source, total = _source(x, y, first_size)
    if total == 0:
        raise ValueError("x holds no examples: a robust accuracy of zero examples is undefined")
    if layout.processes > 1:
        if checkpoint is not None:
            raise ValueError("checkpoint is not supported when several processes evaluate together")
        if total is not None and layout.agree(-total) != -layout.agree(total):
            raise ValueError("every process must pass the same number of examples")
        if total is not None:
            index_offset = jax.process_index() * total
        else:  # an iterator's length is not known in advance: the process index is folded in
            key_examples = jax.random.fold_in(jax.random.fold_in(key_attacks, _PROCESS), jax.process_index())
    if adaptive and layout.processes > 1:
        raise ValueError("adaptive cannot be combined with several processes")
    flagged: list[tuple[np.ndarray, Any, Any, np.ndarray]] = []  # with adaptive: (indices, x, y, flags)
    certifier = None
    if certify is not None:
        if checkpoint is not None or layout.processes > 1:
            raise ValueError("certify cannot be combined with checkpoint or with several processes")
        certifier = CertifiedStream(logits_fn, certify, key=key, bounds=bounds)
    # Parameters copied to every device once, not at every call of a sharded program.
    attacked_fn = logits_fn
    if layout.sharding is not None:
        attacked_fn = shd.replicate(logits_fn, cast(Mesh, layout.sharding.mesh))
    lo, hi = np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32)

    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = None
    saved: SavedRun | None = None
    if path is not None:
        fingerprint = run_fingerprint(
            eps=eps,
            norm=norm,
            attacks=names,
            key=key,
            bounds=(lo, hi),
            logits_fn=logits_fn,
            batch_size=None if auto else int(cast(int, batch_size)),
        )
        if resume and path.exists():
            saved = _resume(path, fingerprint)
            if store_adversarial:
                raise ValueError("store_adversarial cannot be combined with resume")
    if not auto:
        size = _Size(int(cast(int, batch_size)))
    elif saved is not None:  # the size the checkpoint's batches were cut with
        size = _Size(cast(int, saved.fingerprint.batch_size))
    else:
        size = _Size(_first_size(max_batch_size, total, layout.multiple))
    if path is not None and saved is None and total is not None and total <= size.value:
        warnings.warn(
            f"checkpoint={str(path)!r} is written after each batch, but all {total} examples fit in one "
            f"batch of {size.value}: nothing is saved before the run ends; pass a smaller batch_size to "
            "keep partial progress",
            UserWarning,
            stacklevel=2,
        )
    # A diagnosed run asks its gradient members for their traces; a randomised
    # model's iterates are judged on other draws than the evaluation's, so its
    # indicators come from the diagnostic attack, which judges them on the same.
    trace = diagnose and not randomized
    setting = _Setting(attacked_fn, attacks, float(eps), norm, lo, hi, size.value, layout, randomized, trace)
    skip = 0 if saved is None else saved.examples
    if saved is not None and skip and (saved.result.indicators is not None) != diagnose:
        raise ValueError(
            f"the checkpoint {str(path)!r} was written with diagnose={not diagnose}: resume with "
            f"diagnose={not diagnose}, or start again with overwrite=True"
        )
    t = tally(names, eps=float(eps), norm=norm, keep_adversarial=store_adversarial, diagnose=diagnose)
    state = t.init(None if saved is None else saved.result)

    def so_far(batch_size: int, layout: _Layout | None = None) -> EvaluationResult:
        return _finalize(
            state, names, eps, norm, diagnose, wall_seconds=wall(), batch_size=batch_size, layout=layout
        )

    hasher = DataHasher()  # the examples done so far, as the checkpoint records them
    first = _FirstExamples(check_size)  # for the masking checks, resumed or not
    batch_index = 0 if saved is None else saved.batches
    wall_before = 0.0 if saved is None else saved.result.wall_seconds
    start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - start

    def reattack_flagged(result: EvaluationResult) -> AdaptiveReport:
        """The adaptive re-attack of every session's flagged robust examples."""
        return _reattack(
            result, flagged, logits_fn, eps=float(eps), norm=norm, bounds=bounds, key=key_checks,
            batch_size=size.value, randomized=randomized, surrogate_fn=surrogate_fn,
        )  # fmt: skip

    pieces = _pieces(source, skip, size, layout.placer() if prefetch else None)
    reader = _ReadAhead(pieces, prefetch) if prefetch else None
    feed = _Cutter(reader if reader is not None else pieces)
    bar = None
    try:
        if progress and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=skip, unit="ex", desc=f"evaluate {norm} eps={eps:g}")
        if saved is not None:
            indicators = saved.result.indicators
            saved_flags = _indicator_flags(indicators) if adaptive and indicators is not None else None
            while hasher.count < skip:  # read and hashed, not attacked
                piece = feed.take(min(skip - hasher.count, size.value))
                if piece is None:
                    break
                first.offer(hasher.count, piece)
                if saved_flags is not None:  # the earlier sessions' flagged examples, read again
                    rows = slice(hasher.count, hasher.count + len(piece.x))
                    fooled_by = saved.result.fooled_by[rows]
                    flagged += _flagged(saved_flags[rows], fooled_by, hasher.count, piece.x, piece.y)
                hasher.update(piece.x, piece.y)
            more = feed.take(size.value)
            if more is not None:
                feed.give_back(more)
            check_data(saved, hasher, more=more is not None)  # refuses another dataset
            if saved.complete and (not adaptive or saved.result.adaptive is not None):
                return saved.result
            if saved.complete:  # finished without the adaptive re-attack: run it now
                result = saved.result
                result.adaptive = reattack_flagged(result)
                assert path is not None and fingerprint is not None
                write_checkpoint(
                    path, result, fingerprint=fingerprint._replace(batch_size=size.value), data=hasher,
                    complete=True, batches=saved.batches,
                )  # fmt: skip
                return result
        while (piece := feed.take(size.value)) is not None:
            first.offer(hasher.count, piece)
            # Each example's key comes from its index in the data, never from its batch.
            keys = example_keys(key_examples, index_offset + hasher.count + np.arange(len(piece.x)))
            try:
                out = _evaluate_batch(
                    setting._replace(batch_size=size.value), piece.x, piece.y, keys, piece.placed
                )
            except jax.errors.JaxRuntimeError as e:
                if not _out_of_memory(e):
                    raise
                smaller = _halved(size.value, layout.multiple)
                if not auto or smaller >= size.value:
                    e.add_note(
                        f"jaxadv.evaluate: a batch of {len(piece.x)} examples does not fit in device memory; "
                        + (
                            "pass a smaller batch_size, or batch_size='auto' to find one that fits"
                            if not auto
                            else "even the smallest batch (one example per device) does not fit"
                        )
                    )
                    raise
                feed.give_back(piece._replace(placed=None))  # its device copy is freed
                size.value = smaller
                continue
            flags = None
            if diagnose:
                flags = _diagnose_batch(
                    logits_fn, piece.x, piece.y, np.asarray(out.fooled_by) >= 0, keys, eps=float(eps),
                    norm=norm, bounds=bounds, randomized=randomized, trace=out.trace,
                )  # fmt: skip
                if adaptive:  # the flagged examples counted robust, kept for the re-attack
                    flagged += _flagged(flags, np.asarray(out.fooled_by), hasher.count, piece.x, piece.y)
            state = t.update(state, out, flags)
            if certifier is not None:
                certifier.add(piece.x, piece.y)
            hasher.update(piece.x, piece.y)
            batch_index += 1
            if path is not None and fingerprint is not None:
                write_checkpoint(
                    path,
                    so_far(size.value),
                    fingerprint=fingerprint._replace(batch_size=size.value),
                    data=hasher,
                    complete=False,
                    batches=batch_index,
                )
            if bar is not None:
                bar.update(len(piece.x))
    finally:
        if reader is not None:
            reader.close()
        if bar is not None:
            bar.close()

    if layout.agree(hasher.count) == 0:  # an iterable that yielded no examples (on every process)
        raise ValueError("x yielded no examples: a robust accuracy of zero examples is undefined")
    result = so_far(size.value, layout)
    result.warnings.extend(_non_finite_warnings(result))
    if certifier is not None:
        result.certified = certifier.result()
    if adaptive:
        result.adaptive = reattack_flagged(result)
    check_batch = first.batch()
    if checks and check_batch is not None:
        checked = fix_key(logits_fn, key_checks) if randomized else logits_fn
        _attach_checks(result, checked, check_batch, attacks, key_checks, bounds)
    if path is not None and fingerprint is not None:
        write_checkpoint(
            path,
            result,
            fingerprint=fingerprint._replace(batch_size=size.value),
            data=hasher,
            complete=True,
            batches=batch_index,
        )
    return result


def _attach_checks(
    result: EvaluationResult,
    logits_fn: LogitsFn,
    batch: tuple[np.ndarray, np.ndarray],
    attacks: list[SuiteAttack],
    key: PRNGKey,
    bounds: Bounds,
) -> None:
    """Add the masking checks' warnings and figures to ``result``; a check that fails
    becomes a warning, so the evaluated examples are never lost to it."""
    try:
        report = masking_checks(
            logits_fn,
            batch[0],
            batch[1],
            eps=result.eps,
            norm=cast(Norm, result.norm),
            key=key,
            bounds=bounds,
            suite_result=result,
            black_box=[a.black_box for a in attacks],
        )
    except Exception as e:  # noqa: BLE001 - any failure here must not cost the evaluated results
        result.checks["checks_error"] = f"{type(e).__name__}: {e}"
        result.warnings.append(
            f"the gradient-masking checks failed ({type(e).__name__}: {e}); the robust accuracy "
            "above stands, but was not checked for masking"
        )
        return
    result.warnings.extend(report.warnings)
    result.checks.update(report.figures)
