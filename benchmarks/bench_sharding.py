"""Throughput of PGD-10 split over 1, 2, 4 and 8 simulated CPU devices.

Each device count runs in its own process (the device count of a JAX process
is fixed when it starts), with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
The batch is split along its first axis with :func:`jaxadv.sharding.shard_batch`
and attacked with :func:`jaxadv.pgd` (10 steps, L-inf, the digits CNN). The
script prints images per second and the ratio to one device.

Simulated CPU devices share the machine's cores: the ratios measure the
overhead of the SPMD program (partitioning, per-device dispatch) and how well
XLA:CPU spreads small per-device programs over the cores, not a speed-up from
more hardware. With more simulated devices than cores, no gain is expected.

Usage::

    python benchmarks/bench_sharding.py [--batch 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEVICE_COUNTS = (1, 2, 4, 8)


def _worker(batch: int, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxadv
    from jaxadv import examples
    from jaxadv import sharding as shd

    test = examples.load_digits(0)[1]
    idx = np.arange(batch) % len(test.y)
    x, y = test.x[idx], test.y[idx]
    model = examples.DigitsCNN()
    fn = shd.replicate(jaxadv.from_flax(model, model.init(jax.random.key(0), jnp.asarray(x[:1]))))
    data = shd.shard_batch((x, y), pad=False).data

    def run() -> None:
        jax.block_until_ready(jaxadv.pgd(fn, *data, key=jax.random.key(0), eps=0.1, steps=10))

    start = time.perf_counter()
    run()  # compiles
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    best = min(times)
    return {
        "devices": jax.device_count(),
        "seconds": best,
        "images_per_s": batch / best,
        "first_call_s": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="images per PGD call (a multiple of 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the best is reported")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.batch, args.repeats)))
        return
    if args.batch % max(DEVICE_COUNTS):
        parser.error(f"--batch must be a multiple of {max(DEVICE_COUNTS)}")
    root = Path(__file__).resolve().parents[1]
    rows = []
    for n in DEVICE_COUNTS:
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, __file__, "--worker", str(n), "--batch", str(args.batch)]
        cmd += ["--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["images_per_s"]
    print(f"PGD-10, digits CNN, batch {args.batch}, L-inf; CPU cores available: {os.cpu_count()}")
    print("(simulated devices share those cores: the throughput is bound by them, not by the device count)")
    print(f"{'devices':>8} {'images/s':>10} {'vs 1 device':>12} {'first call s':>13}")
    for r in rows:
        print(
            f"{r['devices']:>8d} {r['images_per_s']:>10.0f} {r['images_per_s'] / base:>12.2f} "
            f"{r['first_call_s']:>13.1f}"
        )


if __name__ == "__main__":
    main()
