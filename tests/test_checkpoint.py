"""Checkpoints of jaxadv.evaluate: resumed exactly, refused when damaged or from another run, never lost.

Every refusal must name the file and the problem and leave the file byte for
byte as it was. The fault-injection tests interrupt runs at random points (a
failing rename between the temporary file and the checkpoint, and SIGKILL of a
subprocess) and resume until done: the result must equal an uninterrupted
run's, and the checkpoint must be readable after every interruption.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.evaluation import CheckpointError, EvaluationResult, MaskingReport, SuiteAttack
from jaxadv.evaluation.checkpoint import DataHasher, read_checkpoint

W = sm.random_weights(1, features=64, classes=4)
N = 96


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(1).uniform(0, 1, (N, 8, 8)).astype(np.float32)
    y = np.array(jaxadv.predict(sm.model(W), x))
    y[::9] = (y[::9] + 1) % 4  # a few misclassified examples
    return x, y


def _kw(**over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        eps=0.1, suite=["fgsm", "pgd-20"], key=jax.random.key(0), batch_size=32, progress=False, checks=False
    )
    return {**kw, **over}


def _same(a: EvaluationResult, b: EvaluationResult) -> None:
    np.testing.assert_array_equal(a.fooled_by, b.fooled_by)
    np.testing.assert_array_equal(a.perturbation_norm, b.perturbation_norm)
    np.testing.assert_array_equal(a.queries, b.queries)
    assert (a.warnings, a.checks, a.non_finite) == (b.warnings, b.checks, b.non_finite)


#: Masking-check figures with floats that only survive a round trip bit for bit.
FIGURES = {"accuracy_iterative": 1 / 3, "large_eps": 0.1 + 0.2, "nested": {"a": [1e-300, 2.5]}}


@pytest.fixture(scope="module")
def complete(data: Any, tmp_path_factory: Any) -> tuple[Path, EvaluationResult]:
    """A complete checkpoint with warnings (a non-finite attack) and masking-check figures."""
    x, y = data

    def nan(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        return jnp.full_like(xs, jnp.nan)

    def checks(*args: Any, **kwargs: Any) -> MaskingReport:
        return MaskingReport(["a masking warning"], FIGURES)

    path = tmp_path_factory.mktemp("ckpt") / "run.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.import_module("jaxadv.evaluation.evaluate"), "masking_checks", checks)
        res = jaxadv.evaluate(
            sm.model(W), x, y, checkpoint=path, **_kw(suite=[SuiteAttack("nan", nan), "fgsm"], checks=True)
        )
    assert len(res.warnings) == 2 and res.checks == FIGURES
    return path, res


def test_complete_checkpoint_resumes_to_the_same_result_without_running(
    data: Any, complete: Any, tmp_path: Any
) -> None:
    x, y = data
    src, res = complete
    path = tmp_path / "run.json"
    path.write_bytes(src.read_bytes())
    before = path.read_bytes()
    calls = []

    def spy(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        calls.append(1)
        return jnp.full_like(xs, jnp.nan)

    again = jaxadv.evaluate(
        sm.model(W),
        x,
        y,
        checkpoint=path,
        resume=True,
        **_kw(suite=[SuiteAttack("nan", spy), "fgsm"], checks=True),
    )
    assert calls == []
    _same(again, res)
    assert again.seconds == res.seconds
    assert path.read_bytes() == before


def _refused(path: Path, match: str, run: Any) -> None:
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match) as info:
        run()
    assert str(path) in str(info.value)
    assert not isinstance(info.value, json.JSONDecodeError)
    assert path.read_bytes() == before


def _corrupt(doc: dict[str, Any], how: str) -> None:
    if how == "lengths":
        doc["perturbation_norm"].pop()
    elif how == "code":
        doc["fooled_by"][3] = 99
    elif how == "missing":
        del doc["queries"]
    elif how == "type":
        doc["fooled_by"][0] = "robust"
    elif how == "count":
        doc["checkpoint"]["data"]["examples"] += 1
    elif how == "unfingerprinted":
        del doc["checkpoint"]


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("truncated", "not valid JSON.*truncated"),
        ("garbled", "not valid JSON"),
        ("binary", "not a text file"),
        ("lengths", "inconsistent lengths.*perturbation_norm has 95"),
        ("code", "unknown outcome code 99"),
        ("missing", "field 'queries' is missing"),
        ("type", "'fooled_by' must hold only integers"),
        ("count", "inconsistent lengths"),
        ("unfingerprinted", "not a checkpoint of jaxadv.evaluate with a run fingerprint"),
    ],
)
def test_damaged_checkpoints_are_refused_and_left_alone(
    data: Any, complete: Any, tmp_path: Any, how: str, match: str
) -> None:
    x, y = data
    src, _ = complete
    path = tmp_path / "run.json"
    raw = src.read_bytes()
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "garbled":
        raw = raw[:200] + b"}{#!" + raw[210:]
    elif how == "binary":
        raw = raw[:100] + b"\xff\xfe" + raw[100:]
    else:
        doc = json.loads(raw)
        _corrupt(doc, how)
        raw = json.dumps(doc).encode()
    path.write_bytes(raw)
    _refused(path, match, lambda: jaxadv.evaluate(sm.model(W), x, y, checkpoint=path, resume=True, **_kw()))


@pytest.mark.parametrize(
    "what", ["eps", "norm", "suite", "key", "bounds", "model", "dataset", "fewer", "more"]
)
def test_checkpoints_of_other_runs_are_refused(data: Any, tmp_path: Any, what: str) -> None:
    x, y = data
    path = tmp_path / "run.json"
    # A partial checkpoint: the first two batches.
    jaxadv.evaluate(sm.model(W), x[:64], y[:64], checkpoint=path, **_kw())
    f, xs, ys, kw = sm.model(W), x, y, _kw()
    if what == "eps":
        kw["eps"] = 0.2
    elif what == "norm":
        kw["norm"] = "l2"
    elif what == "suite":
        kw["suite"] = ["fgsm"]
    elif what == "key":
        kw["key"] = jax.random.key(1)
    elif what == "bounds":
        kw["bounds"] = (-1.0, 1.0)
    elif what == "model":
        f = sm.model(W * 2)
    elif what == "dataset":
        xs = x.copy()
        xs[40, 0, 0] = 1.0 - xs[40, 0, 0]
    elif what == "fewer":
        xs, ys = x[:50], y[:50]
    elif what == "more":  # the checkpoint is complete for 64 examples; these are 96
        pass
    match = {"dataset": "another dataset", "fewer": "holds 64 examples but the data has only 50"}
    match["more"] = "complete with 64 examples but the data has more"
    _refused(
        path,
        match.get(what, f"another {what}"),
        lambda: jaxadv.evaluate(f, xs, ys, checkpoint=path, resume=True, **kw),
    )


def test_partial_checkpoint_of_a_stream_resumes_exactly(data: Any, tmp_path: Any) -> None:
    x, y = data
    path = tmp_path / "run.json"
    calls = {"n": 0}

    def flaky(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return jaxadv.pgd(logits_fn, xs, ys, key=key, eps=eps, steps=5, norm=norm, bounds=bounds)

    def stream() -> Any:
        return ((x[i : i + 32], y[i : i + 32]) for i in range(0, N, 32))

    kw = _kw(suite=[SuiteAttack("pgd-5", flaky)])
    with pytest.raises(KeyboardInterrupt):
        jaxadv.evaluate(sm.model(W), stream(), None, checkpoint=path, **kw)
    saved = read_checkpoint(path)
    assert saved.examples == 64 and not saved.complete
    hasher = DataHasher()
    for i in range(0, 64, 7):  # the digest does not depend on the batching
        hasher.update(x[i : min(i + 7, 64)], y[i : min(i + 7, 64)])
    assert hasher.hexdigest() == saved.data
    resumed = jaxadv.evaluate(sm.model(W), stream(), None, checkpoint=path, resume=True, **kw)
    full = jaxadv.evaluate(sm.model(W), x, y, **kw)
    _same(resumed, full)
    assert read_checkpoint(path).complete


def test_interrupted_writes_never_damage_the_checkpoint(data: Any, tmp_path: Any, monkeypatch: Any) -> None:
    x, y = data
    path = tmp_path / "run.json"
    kw = _kw(batch_size=16)
    full = jaxadv.evaluate(sm.model(W), x, y, **kw)
    real_replace = os.replace
    rng = np.random.default_rng(0)
    for _ in range(20):
        budget = {"left": int(rng.integers(0, 4))}

        def failing_replace(src: Any, dst: Any, budget: dict[str, int] = budget) -> None:
            if budget["left"] == 0:
                raise OSError("disk full")  # the temporary file is written, the rename fails
            budget["left"] -= 1
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", failing_replace)
        try:
            result = jaxadv.evaluate(sm.model(W), x, y, checkpoint=path, resume=True, **kw)
        except OSError:
            monkeypatch.setattr(os, "replace", real_replace)
            if path.exists():
                read_checkpoint(path)  # always whole
            assert not list(tmp_path.glob("*.tmp"))
            continue
        monkeypatch.setattr(os, "replace", real_replace)
        break
    else:
        raise AssertionError("the run never finished")
    _same(result, full)


_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    sys.path.insert(0, {tests!r})
    import small_models as sm
    import jaxadv
    from jaxadv.evaluation import SuiteAttack

    def pgd5(logits_fn, x, y, *, key, eps, norm, bounds):
        return jaxadv.pgd(logits_fn, x, y, key=key, eps=eps, steps=5, norm=norm, bounds=bounds)

    data = np.load({data!r})
    print("ready", flush=True)
    jaxadv.evaluate(
        sm.model(data["w"]), data["x"], data["y"], eps=0.1, suite=[SuiteAttack("pgd-5", pgd5)],
        key=jax.random.key(0), batch_size=8, progress=False, checks=False,
        checkpoint={ckpt!r}, resume=True,
    )
    print("done", flush=True)
    """
)


# Slow tier: runs are killed and resumed in subprocesses.
@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(data: Any, tmp_path: Any) -> None:
    x, y = data
    np.savez(tmp_path / "data.npz", x=x, y=y, w=W)
    ckpt = tmp_path / "run.json"
    script = tmp_path / "run.py"
    tests = str(Path(__file__).parent)
    script.write_text(_SCRIPT.format(tests=tests, data=str(tmp_path / "data.npz"), ckpt=str(ckpt)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.2, 1.5)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if ckpt.exists():
            saved = read_checkpoint(ckpt)  # whole after every kill
            if saved.complete:
                break
    assert kills >= 1
    final = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert final.returncode == 0, final.stderr[-2000:]
    resumed = EvaluationResult.load(ckpt)

    def pgd5(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        return jaxadv.pgd(logits_fn, xs, ys, key=key, eps=eps, steps=5, norm=norm, bounds=bounds)

    full = jaxadv.evaluate(
        sm.model(W),
        x,
        y,
        **_kw(suite=[SuiteAttack("pgd-5", pgd5)], batch_size=8),
    )
    _same(resumed, full)
