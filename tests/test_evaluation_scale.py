"""jaxadv.evaluate at scale: the batch size found by trial, data read ahead by a
thread, iterators cut into batches, and the throughput in the report.

A linear model on 8x8 inputs keeps every case to about a second. Running out of
device memory is simulated with a model that raises XLA's error (a
``jax.errors.JaxRuntimeError`` saying ``RESOURCE_EXHAUSTED``) whenever it is
called on more than ``K`` rows, at trace time, as XLA does for a buffer that
cannot be allocated.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.evaluation import CheckpointError, EvaluationResult, SuiteAttack
from jaxadv.evaluation.checkpoint import read_checkpoint

evaluate_module = importlib.import_module("jaxadv.evaluation.evaluate")

W = sm.random_weights(2, features=64, classes=4)
N = 200
K = 20  # the most rows the simulated device holds
READ_AHEAD = "jaxadv-evaluate-read-ahead"


def _pgd5(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
    return jaxadv.pgd(logits_fn, x, y, key=key, eps=eps, steps=5, norm=norm, bounds=bounds)


# fgsm is deterministic; pgd-5 draws a random start from each batch's key.
SUITE = ["fgsm", SuiteAttack("pgd-5", _pgd5)]


def _kw(**over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(eps=0.1, suite=SUITE, key=jax.random.key(0), progress=False, checks=False)
    return {**kw, **over}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(2).uniform(0, 1, (N, 8, 8)).astype(np.float32)
    y = np.array(jaxadv.predict(sm.model(W), x))
    y[::11] = (y[::11] + 1) % 4  # a few misclassified examples
    return x, y


def _same(a: EvaluationResult, b: EvaluationResult) -> None:
    np.testing.assert_array_equal(a.fooled_by, b.fooled_by)
    np.testing.assert_array_equal(a.perturbation_norm, b.perturbation_norm)
    np.testing.assert_array_equal(a.queries, b.queries)
    if a.x_adv is not None or b.x_adv is not None:
        np.testing.assert_array_equal(a.x_adv, b.x_adv)


def _oom(rows: int) -> jax.errors.JaxRuntimeError:
    return jax.errors.JaxRuntimeError(
        f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate {rows * 256} bytes."
    )


def _limited(limit: dict[str, int]) -> Any:
    """The linear model, on a device that holds at most ``limit["rows"]`` rows."""
    w, b = jnp.asarray(W), jnp.zeros(W.shape[1], jnp.float32)

    def logits_fn(x: Any) -> Any:
        if x.shape[0] > limit["rows"]:
            raise _oom(x.shape[0])
        return sm.apply((w, b), x)

    return logits_fn


_LIMIT = {"rows": K}
LIMITED = _limited(_LIMIT)  # one function for every test: its compiled programs are reused


@pytest.fixture
def limit() -> Iterator[dict[str, int]]:
    _LIMIT["rows"] = K
    yield _LIMIT
    _LIMIT["rows"] = K


def _chunks(x: np.ndarray, y: np.ndarray, sizes: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    start = 0
    for size in sizes:
        yield x[start : start + size], y[start : start + size]
        start += size


@pytest.fixture
def batches_seen(monkeypatch: Any) -> list[int]:
    """The size of every batch handed to the attacks, failed attempts included."""
    seen: list[int] = []
    real = evaluate_module._evaluate_batch

    def spy(s: Any, xb: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(xb))
        return real(s, xb, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_evaluate_batch", spy)
    return seen


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == READ_AHEAD]


# --- batch_size="auto" ----------------------------------------------------------------


@pytest.mark.slow
def test_auto_batch_size_halves_to_the_largest_that_fits(
    data: Any, batches_seen: list[int], limit: Any
) -> None:
    x, y = data
    f = LIMITED
    res = jaxadv.evaluate(f, x, y, batch_size="auto", max_batch_size=64, **_kw())
    # 64 and 32 do not fit; 16, the largest power of two <= K, does.
    assert res.batch_size == 16
    assert batches_seen[:3] == [64, 32, 16]
    assert batches_seen[3:] == [16] * 11 + [8]  # no example lost or evaluated twice
    fixed = jaxadv.evaluate(f, x, y, batch_size=16, **_kw())
    _same(res, fixed)
    assert res.num_examples == N
    assert res.wall_seconds > 0 and res.examples_per_second == pytest.approx(N / res.wall_seconds)
    assert "batch size 16" in res.summary() and "examples/s" in res.summary()
    doc = res.to_dict()
    assert doc["batch_size"] == 16 and doc["examples_per_second"] > 0
    assert json.loads(json.dumps(doc))["wall_seconds"] == res.wall_seconds


def test_auto_batch_size_starts_from_the_data_size(data: Any, batches_seen: list[int]) -> None:
    x, y = data
    res = jaxadv.evaluate(sm.model(W), x[:40], y[:40], batch_size="auto", **_kw())
    assert res.batch_size == 40 and batches_seen == [40]  # fewer examples than max_batch_size=1024
    _same(res, jaxadv.evaluate(sm.model(W), x[:40], y[:40], batch_size=40, **_kw()))


def test_out_of_memory_on_a_later_batch_retries_that_batch(data: Any, batches_seen: list[int]) -> None:
    x, y = data
    calls = {"n": 0}

    def fgsm_oom_once(logits_fn: Any, xs: Any, ys: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the third batch: the bucket of its robust examples grew, say
            raise _oom(xs.shape[0])
        return jaxadv.fgsm(logits_fn, xs, ys, eps=kw["eps"], norm=kw["norm"], bounds=kw["bounds"])

    suite = [SuiteAttack("fgsm", fgsm_oom_once)]
    res = jaxadv.evaluate(sm.model(W), x, y, batch_size="auto", max_batch_size=64, **_kw(suite=suite))
    assert batches_seen == [64, 64, 64, 32, 32, 8]
    assert res.batch_size == 32 and res.num_examples == N
    # A deterministic attack gives each example the same outcome in any batching.
    _same(res, jaxadv.evaluate(sm.model(W), x, y, batch_size=64, **_kw(suite=["fgsm"])))


def test_other_runtime_errors_are_not_retried(data: Any, batches_seen: list[int]) -> None:
    x, y = data

    def broken(logits_fn: Any, xs: Any, ys: Any, **kw: Any) -> Any:
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        jaxadv.evaluate(
            sm.model(W), x, y, batch_size="auto", max_batch_size=64, **_kw(suite=[SuiteAttack("b", broken)])
        )
    assert batches_seen == [64]


def test_out_of_memory_with_a_fixed_batch_size_says_what_to_do(data: Any, limit: Any) -> None:
    x, y = data
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED") as info:
        jaxadv.evaluate(LIMITED, x, y, batch_size=32, **_kw())
    assert any("batch_size='auto'" in note for note in getattr(info.value, "__notes__", []))
    limit["rows"] = 0
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        jaxadv.evaluate(LIMITED, x, y, batch_size="auto", max_batch_size=4, **_kw())
    assert any("smallest batch" in note for note in getattr(info.value, "__notes__", []))


def test_auto_sizes_stay_multiples_of_the_device_share() -> None:
    first, halved = evaluate_module._first_size, evaluate_module._halved
    assert first(1024, None, 1) == 1024 and first(1024, 200, 1) == 200
    assert first(1024, 100, 8) == 104  # 100 examples over 8 devices: one padded batch
    assert first(1000, None, 16) == 992 and first(4, None, 8) == 8
    sizes = [first(1024, 100, 8)]
    while (smaller := halved(sizes[-1], 8)) < sizes[-1]:
        sizes.append(smaller)
    assert sizes == [104, 48, 24, 8]
    assert all(s % 8 == 0 for s in sizes)


def test_auto_checkpoint_records_the_size_and_resumes_with_it(data: Any, tmp_path: Path, limit: Any) -> None:
    x, y = data
    path = tmp_path / "run.json"
    calls = {"n": 0}

    def flaky(logits_fn: Any, xs: Any, ys: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the third batch of 16 (64 and 32 failed before any attack ran)
        return _pgd5(logits_fn, xs, ys, **kw)

    suite = [SuiteAttack("pgd-5", flaky)]
    auto: dict[str, Any] = dict(batch_size="auto", max_batch_size=64)
    with pytest.raises(KeyboardInterrupt):
        jaxadv.evaluate(LIMITED, x, y, checkpoint=path, **_kw(suite=suite), **auto)
    saved = read_checkpoint(path)
    assert (saved.fingerprint.batch_size, saved.batches, saved.examples) == (16, 2, 32)
    assert saved.result.batch_size == 16 and saved.result.wall_seconds > 0
    assert json.loads(path.read_text())["checkpoint"]["fingerprint"]["batch_size"] == 16

    # Another size continues it too (each example's draws come from its index), on a copy.
    other = tmp_path / "other.json"
    other.write_bytes(path.read_bytes())
    resumed_8 = jaxadv.evaluate(
        LIMITED, x, y, checkpoint=other, resume=True, batch_size=8, **_kw(suite=suite)
    )
    assert resumed_8.batch_size == 8

    # "auto" continues with the checkpoint's size, without trying larger ones again.
    limit["rows"] = 10**6
    resumed = jaxadv.evaluate(LIMITED, x, y, checkpoint=path, resume=True, **_kw(suite=suite), **auto)
    assert resumed.batch_size == 16 and resumed.wall_seconds >= saved.result.wall_seconds
    uninterrupted = jaxadv.evaluate(LIMITED, x, y, batch_size=16, **_kw(suite=[SuiteAttack("pgd-5", _pgd5)]))
    _same(resumed, uninterrupted)
    _same(resumed_8, uninterrupted)
    done = read_checkpoint(path)
    assert done.complete and done.batches == 13 and done.fingerprint.batch_size == 16


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("version", "format version 1 is not 3"),
        ("size type", "field 'batch_size' has the wrong type"),
        ("size", "batch size must be >= 1"),
        ("batches", "field 'batches' is missing"),
        ("wall", "'wall_seconds' must be a non-negative number"),
    ],
)
def test_checkpoints_without_a_valid_batch_size_are_refused(
    data: Any, tmp_path: Path, how: str, match: str
) -> None:
    x, y = data
    path = tmp_path / "run.json"
    kw = _kw(suite=["fgsm"], batch_size=16)
    jaxadv.evaluate(sm.model(W), x[:32], y[:32], checkpoint=path, **kw)
    doc = json.loads(path.read_text())
    section = doc["checkpoint"]
    if how == "version":
        section["version"] = 1
    elif how == "size type":
        section["fingerprint"]["batch_size"] = "16"
    elif how == "size":
        section["fingerprint"]["batch_size"] = 0
    elif how == "batches":
        del section["data"]["batches"]
    else:
        doc["wall_seconds"] = -1.0
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match):
        jaxadv.evaluate(sm.model(W), x[:32], y[:32], checkpoint=path, resume=True, **kw)
    assert path.read_bytes() == before


# --- the data pipeline: iterators and reading ahead ---------------------------------------


@pytest.mark.parametrize("source", ["arrays", "iterator"])
def test_prefetch_gives_the_same_results(data: Any, source: str) -> None:
    x, y = data

    threads: list[int] = []

    def pgd5_spy(logits_fn: Any, xs: Any, ys: Any, **kw: Any) -> Any:
        threads.append(len(_read_ahead_threads()))
        return _pgd5(logits_fn, xs, ys, **kw)

    def run(prefetch: int) -> EvaluationResult:
        threads.clear()
        xs, ys = (x, y) if source == "arrays" else (_chunks(x, y, [32] * 7), None)
        suite = ["fgsm", SuiteAttack("pgd-5", pgd5_spy)]
        return jaxadv.evaluate(
            sm.model(W), xs, ys, batch_size=32, prefetch=prefetch, store_adversarial=True, **_kw(suite=suite)
        )

    with_prefetch = run(2)
    assert threads and all(n == 1 for n in threads)  # the next batches were read meanwhile
    without = run(0)
    assert threads and all(n == 0 for n in threads)
    _same(with_prefetch, without)
    assert with_prefetch.x_adv is not None and with_prefetch.x_adv.shape == x.shape


@pytest.mark.parametrize("prefetch", [0, 2])
def test_iterator_batches_are_cut_into_batch_size(data: Any, batches_seen: list[int], prefetch: int) -> None:
    x, y = data
    uneven = [7, 50, 1, 13, 64, 65]  # 200 examples in batches of any size
    res = jaxadv.evaluate(sm.model(W), _chunks(x, y, uneven), None, batch_size=32, prefetch=prefetch, **_kw())
    assert batches_seen == [32] * 6 + [8]
    _same(res, jaxadv.evaluate(sm.model(W), x, y, batch_size=32, **_kw()))
    batches_seen.clear()
    res = jaxadv.evaluate(
        sm.model(W),
        _chunks(x, y, [10] * 20),
        None,
        batch_size="auto",
        max_batch_size=64,
        prefetch=prefetch,
        **_kw(),
    )
    assert batches_seen == [64, 64, 64, 8] and res.batch_size == 64  # joined up to the size tried


def test_iterator_batches_of_another_shape_cannot_be_joined(data: Any) -> None:
    x, y = data

    def stream() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield x[:10], y[:10]
        yield x[10:20].reshape(10, 64), y[10:20]

    with pytest.raises(
        ValueError, match=r"share their per-example shape and dtype.*float32\[8, 8\] and float32\[64\]"
    ):
        jaxadv.evaluate(sm.model(W), stream(), None, batch_size=16, **_kw())
    assert not _read_ahead_threads()


class DiskGone(OSError):
    pass


def _broken_stream(x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, 96, 32):
        yield x[i : i + 32], y[i : i + 32]
    raise DiskGone("the disk went away")


@pytest.mark.parametrize("prefetch", [0, 2])
def test_iterator_error_propagates_and_keeps_the_batches_done(
    data: Any, tmp_path: Path, prefetch: int
) -> None:
    x, y = data
    path = tmp_path / "run.json"
    kw = _kw(batch_size=32, prefetch=prefetch)
    with pytest.raises(DiskGone, match="went away") as info:
        jaxadv.evaluate(sm.model(W), _broken_stream(x, y), None, checkpoint=path, **kw)
    # The iterator's own frame is in the traceback, also when a thread read it.
    assert any(entry.name == "_broken_stream" for entry in info.traceback)
    assert not _read_ahead_threads()
    saved = read_checkpoint(path)
    assert saved.examples == 96 and saved.batches == 3 and not saved.complete
    resumed = jaxadv.evaluate(sm.model(W), _chunks(x, y, [32] * 7), None, checkpoint=path, resume=True, **kw)
    _same(resumed, jaxadv.evaluate(sm.model(W), x, y, **kw))


def test_no_thread_outlives_evaluate(data: Any, tmp_path: Path) -> None:
    x, y = data
    before = set(threading.enumerate())

    def slow() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, N, 16):
            time.sleep(0.05)  # a read under way when the attack fails
            yield x[i : i + 16], y[i : i + 16]

    def interrupted(logits_fn: Any, xs: Any, ys: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    jaxadv.evaluate(sm.model(W), slow(), None, batch_size=16, **_kw())
    assert set(threading.enumerate()) == before
    with pytest.raises(KeyboardInterrupt):
        jaxadv.evaluate(
            sm.model(W), slow(), None, batch_size=16, **_kw(suite=[SuiteAttack("i", interrupted)])
        )
    assert set(threading.enumerate()) == before
    with pytest.raises(DiskGone):
        jaxadv.evaluate(sm.model(W), _broken_stream(x, y), None, batch_size=16, **_kw())
    assert set(threading.enumerate()) == before
    # Refused before any batch runs: a checkpoint of another run.
    path = tmp_path / "run.json"
    jaxadv.evaluate(sm.model(W), x[:32], y[:32], batch_size=16, checkpoint=path, **_kw())
    with pytest.raises(CheckpointError):
        jaxadv.evaluate(sm.model(W), slow(), None, batch_size=16, checkpoint=path, resume=True, **_kw())
    assert set(threading.enumerate()) == before


def test_bad_batch_size_and_prefetch(data: Any) -> None:
    x, y = data
    for bad in (0, -3, "big", True, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            jaxadv.evaluate(sm.model(W), x, y, batch_size=bad, **_kw())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch_size"):
        jaxadv.evaluate(sm.model(W), x, y, batch_size="auto", max_batch_size=0, **_kw())
    with pytest.raises(ValueError, match="prefetch"):
        jaxadv.evaluate(sm.model(W), x, y, prefetch=-1, **_kw())
