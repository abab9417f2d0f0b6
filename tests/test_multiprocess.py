"""Two processes on one machine, joined by jax.distributed, evaluate one dataset together.

Each process simulates 2 CPU devices (4 in all) and uses the gloo CPU
collectives. Each passes only its own examples (21 each, an uneven count for 2
devices); :func:`jaxadv.evaluate` splits every batch over all 4 devices and
gathers the per-example results once, at the end. The test checks that both
processes return the same result and that it equals a single-process
evaluation of the 42 examples (a deterministic suite, so equality is exact),
that a direct attack on a :func:`jaxadv.sharding.shard_batch` of the two
processes' rows gathers back to the single-process attack, and that one PGD
adversarial-training step (:func:`jaxadv.training.make_train_step`) on a batch
split over both processes equals the single-process step up to rounding.

The processes are time-boxed, so that a hang (a process waiting for a peer
that died) cannot stall the test run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

PROCESSES = 2
DEVICES_PER_PROCESS = 2
PER_PROCESS = 22
EPS = 0.1
TIMEOUT_S = 300
TRAIN_PER_PROCESS = 22  # a multiple of the 2 devices of each process: no padding in training

pytestmark = pytest.mark.slow  # two jax processes start and compile (about 10 s)


def _suite() -> list[Any]:
    import jaxadv
    from jaxadv.evaluation import SuiteAttack

    def bim3(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        del key
        return jaxadv.bim(logits_fn, x, y, eps=eps, steps=3, norm=norm, bounds=bounds)

    return ["fgsm", SuiteAttack("bim-3", bim3)]


def _data() -> tuple[np.ndarray, np.ndarray]:
    from jaxadv import examples

    test = examples.load_digits(0)[1]
    n = PROCESSES * max(PER_PROCESS, TRAIN_PER_PROCESS)
    return test.x[:n], test.y[:n]


def _model(params_file: str) -> tuple[Any, Any, Any]:
    import flax.serialization

    from jaxadv import examples
    from jaxadv.models import from_flax

    model = examples.DigitsCNN()
    template = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.float32))
    variables = flax.serialization.from_bytes(template, Path(params_file).read_bytes())
    return model, variables, from_flax(model, variables)


def _worker(process_id: int, port: int, params_file: str) -> dict[str, Any]:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=PROCESSES,
        process_id=process_id,
        initialization_timeout=120,
    )
    import jaxadv
    from jaxadv import sharding as shd

    model, variables, fn = _model(params_file)
    x, y = _data()
    rows = slice(process_id * PER_PROCESS, (process_id + 1) * PER_PROCESS)
    x_local, y_local = x[rows], y[rows]
    result = jaxadv.evaluate(
        fn,
        x_local,
        y_local,
        eps=EPS,
        suite=_suite(),
        key=jax.random.key(0),
        batch_size=16,
        progress=False,
        checks=False,
    )
    batch = shd.shard_batch((x_local, y_local))
    xs, ys = batch.data
    x_adv = jaxadv.bim(fn, xs, ys, eps=EPS, steps=3)
    gathered = shd.gather(x_adv, batch.mask)
    loss, params = _train_step(model, variables, x, y, process_id)
    return {
        "train_loss": loss,
        "train_params": params,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "global_rows": int(xs.shape[0]),
        "x_adv_sharded": bool(x_adv.sharding.is_equivalent_to(shd.batch_sharding(), x_adv.ndim)),
        "fooled_by": result.fooled_by.tolist(),
        "perturbation_norm": result.perturbation_norm.tolist(),
        "bim_x_adv": np.asarray(gathered, np.float64).ravel().tolist(),
    }


def _step_fn(model: Any) -> Any:
    import optax

    from jaxadv.training import init_train_state, make_train_step

    tx = optax.sgd(0.1)
    step = make_train_step(model, tx, method="pgd", eps=EPS, step_size=0.05, steps=2)
    return step, lambda variables: init_train_state(variables, tx)


def _train_step(
    model: Any, variables: Any, x: np.ndarray, y: np.ndarray, process_id: int
) -> tuple[float, list[float]]:
    """One PGD adversarial-training step on 2 x 22 rows: batch split over both processes."""
    from jaxadv import sharding as shd

    step, init = _step_fn(model)
    rows = slice(process_id * TRAIN_PER_PROCESS, (process_id + 1) * TRAIN_PER_PROCESS)
    batch = shd.shard_batch((x[rows], y[rows]), pad=False)
    state = shd.replicate(init(variables))
    new, metrics = step(state, *batch.data, jax.random.key(7))
    # Replicated results: every process reads its own copy.
    leaves = [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree_util.tree_leaves(new.params)]
    return float(metrics["loss"]), np.concatenate([a.ravel() for a in leaves]).astype(np.float64).tolist()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def outputs(cnn: Any, tmp_path_factory: Any) -> list[dict[str, Any]]:
    import flax.serialization

    tmp = tmp_path_factory.mktemp("multiprocess")
    params = tmp / "cnn.msgpack"
    params.write_bytes(flax.serialization.to_bytes(cnn.variables))
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    port = _free_port()
    # Output goes to files, not pipes: a process blocked on a full pipe would hold
    # up the other's shutdown barrier in jax.distributed.
    logs = [(tmp / f"out{i}.txt", tmp / f"err{i}.txt") for i in range(PROCESSES)]
    procs = []
    for i, (out, err) in enumerate(logs):
        with out.open("w") as fout, err.open("w") as ferr:
            cmd = [sys.executable, __file__, str(i), str(port), str(params)]
            procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=fout, stderr=ferr))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        for proc, (_, err) in zip(procs, logs, strict=True):
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err.read_text()[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [json.loads(out.read_text().strip().splitlines()[-1]) for out, _ in logs]


def test_processes_form_one_mesh(outputs: list[dict[str, Any]]) -> None:
    assert [o["process_index"] for o in outputs] == list(range(PROCESSES))
    for o in outputs:
        assert o["process_count"] == PROCESSES
        assert o["devices"] == PROCESSES * DEVICES_PER_PROCESS
        assert o["local_devices"] == DEVICES_PER_PROCESS
        # 21 rows per process, padded to 22 (a multiple of its 2 devices).
        assert o["global_rows"] == PROCESSES * 22
        assert o["x_adv_sharded"]


def test_evaluation_across_processes_equals_one_process(cnn: Any, outputs: list[dict[str, Any]]) -> None:
    import jaxadv

    x, y = _data()
    x, y = x[: PROCESSES * PER_PROCESS], y[: PROCESSES * PER_PROCESS]
    one = jaxadv.evaluate(
        cnn.logits_fn,
        x,
        y,
        eps=EPS,
        suite=_suite(),
        key=jax.random.key(0),
        batch_size=16,
        progress=False,
        checks=False,
        sharding=False,
    )
    for o in outputs:
        # Every process holds the whole result: process 0's examples, then process 1's.
        np.testing.assert_array_equal(o["fooled_by"], one.fooled_by)
        np.testing.assert_allclose(o["perturbation_norm"], one.perturbation_norm, rtol=0, atol=1e-6)
    assert 0 < one.robust_accuracy < one.clean_accuracy


def test_direct_attack_across_processes_gathers_back(cnn: Any, outputs: list[dict[str, Any]]) -> None:
    import jaxadv

    x, y = _data()
    x, y = x[: PROCESSES * PER_PROCESS], y[: PROCESSES * PER_PROCESS]
    ref = np.asarray(jaxadv.bim(cnn.logits_fn, x, y, eps=EPS, steps=3), np.float64).ravel()
    for o in outputs:
        np.testing.assert_array_equal(np.asarray(o["bim_x_adv"]), ref)


def test_training_step_across_processes_equals_one_process(cnn: Any, outputs: list[dict[str, Any]]) -> None:
    x, y = _data()
    n = PROCESSES * TRAIN_PER_PROCESS
    step, init = _step_fn(cnn.model)
    new, metrics = step(init(cnn.variables), x[:n], y[:n], jax.random.key(7))
    ref = np.concatenate([np.asarray(a).ravel() for a in jax.tree_util.tree_leaves(new.params)])
    for o in outputs:
        # The batch mean is reduced across devices in another order: equal up to rounding.
        assert o["train_loss"] == pytest.approx(float(metrics["loss"]), rel=1e-5)
        np.testing.assert_allclose(np.asarray(o["train_params"]), ref, rtol=0, atol=1e-5)


if __name__ == "__main__":
    print(json.dumps(_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))
