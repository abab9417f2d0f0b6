"""The accelerator table: jaxadv against torchattacks and AutoAttack on whatever device JAX sees.

    python benchmarks/accelerator.py            # PreAct-ResNet-18 and WRN-28-10 at 32x32x3
    python benchmarks/accelerator.py --quick    # a smoke run: WRN-16-1, 4 images (CPU: a few minutes)

One command for a GPU or TPU machine. For each model (RobustBench's PyTorch
architecture with random weights and batch-norm statistics, converted with
``jaxadv.zoo.from_torch``; the logits are checked to agree) it measures, in
one run, with the functions of ``benchmarks/bench_scale.py``:

* PGD-10 (L-inf, eps 8/255, step 2/255): ``jaxadv.pgd`` as a direct call and
  under ``jit``, against ``torchattacks.PGD`` on the same weights;
* the gradient floor: ten jitted input-gradients one after another, and the
  direct call's ratio to it;
* APGD-CE, 100 iterations: ``jaxadv.apgd`` against AutoAttack's ``APGDAttack``;
* memory: XLA's buffer assignment for the PGD-10 program and for one
  forward-backward pass, the PGD-10 program of the ``remat=True`` model, the
  device's peak as JAX reports it (GPU/TPU) and PyTorch's CUDA peak for its PGD-10;
* the standard suite, ``jaxadv.evaluate(suite="standard")`` against
  ``AutoAttack(version="standard")`` on the same examples: time and robust accuracy.

PyTorch runs on the GPU when JAX does and PyTorch has CUDA; otherwise (a TPU,
or a CPU-only PyTorch) it runs on the CPU, and the rows comparing the two are
marked as not on the same device. The table printed at the end names the
device and states each target next to its figure:

* PGD-10 at least 2x faster than torchattacks on the same GPU;
* the standard suite at least 3x faster than AutoAttack's standard version;
* the direct PGD-10 call at most 1.05x the gradient floor.

The targets are for an accelerator; on a CPU the table is printed with the
same columns, for a smoke test (``--quick``) or for reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale as bs  # noqa: E402

PGD_SPEEDUP_TARGET = 2.0
SUITE_SPEEDUP_TARGET = 3.0
FLOOR_TARGET = 1.05


def _verdict(ok: bool, applies: bool) -> str:
    if not applies:
        return "n/a"
    return "met" if ok else "NOT met"


def _torch_peak_mib(torch: Any, s: bs.Setup, fn: Any) -> float:
    """PyTorch's peak CUDA memory while ``fn`` runs, in MiB (NaN on the CPU)."""
    if s.device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _jax_peak_mib() -> float:
    """The JAX device's peak memory in use so far in this process, in MiB (NaN where not reported)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return float("nan") if peak is None else peak / 2**20


def _fmt(value: float, unit: str) -> str:
    return "-" if np.isnan(value) else f"{value:.3g} {unit}"


def bench(arch: str, args: argparse.Namespace, torch: Any, device: str, accelerator: bool) -> list[str]:
    """Measure one model; returns its rows of the final table (markdown)."""
    s = bs.setup(arch, args.batch, torch, device)
    print(f"\n{arch}: batch {args.batch} of 32x32x3, max logit gap to PyTorch {s.gap:.1e}", flush=True)
    same_device = device != "cpu" or not accelerator  # PyTorch sees the device JAX uses
    rows = []

    pgd = bs.pgd_times(s, torch, args.repeats)
    best = {name: min(ts) for name, ts in pgd.items()}
    for name, t in best.items():
        print(f"  {name:36s} {t:8.3f} s", flush=True)
    floor, direct, jitted = best[bs.FLOOR], best[bs.DIRECT], best[bs.JITTED]
    torch_pgd = min((t for n, t in best.items() if n.startswith("torchattacks")), default=float("nan"))
    speedup = torch_pgd / direct
    rows.append(
        f"| {arch} | PGD-10, direct call | {direct:.3f} s | torchattacks {_fmt(torch_pgd, 's')} "
        f"| {speedup:.2f}x faster | >= {PGD_SPEEDUP_TARGET:g}x | "
        f"{_verdict(speedup >= PGD_SPEEDUP_TARGET, accelerator and same_device)} |"
    )
    rows.append(
        f"| {arch} | PGD-10, under `jit` | {jitted:.3f} s | torchattacks {_fmt(torch_pgd, 's')} "
        f"| {torch_pgd / jitted:.2f}x faster | | |"
    )
    rows.append(
        f"| {arch} | PGD-10 / gradient floor (10 gradients: {floor:.3f} s) | {direct / floor:.2f}x "
        f"(jit {jitted / floor:.2f}x) | | | <= {FLOOR_TARGET} | "
        f"{_verdict(direct / floor <= FLOOR_TARGET, accelerator)} |"
    )

    apgd = {name: min(ts) for name, ts in bs.apgd_times(s, torch, args.repeats, args.apgd_steps).items()}
    for name, t in apgd.items():
        print(f"  {name:36s} {t:8.3f} s", flush=True)
    ours = apgd[bs.APGD]
    ref = min((t for n, t in apgd.items() if n.startswith(bs.APGD_REFERENCE)), default=float("nan"))
    rows.append(
        f"| {arch} | APGD-CE-{args.apgd_steps} | {ours:.3f} s | AutoAttack APGD {_fmt(ref, 's')} "
        f"| {ref / ours:.2f}x faster | | |"
    )

    mib = bs.memory(s)
    remat = bs.memory(s, remat=True)
    ta_peak = float("nan")
    if s.device == "cuda":
        import torchattacks

        ta = torchattacks.PGD(s.model, eps=bs.EPS, alpha=bs.ALPHA, steps=10, random_start=True)
        ta_peak = _torch_peak_mib(torch, s, lambda: ta(s.xt, s.yt))
    print(
        f"  memory: PGD-10 program {mib['pgd-10']:.0f} MiB (remat {remat['pgd-10']:.0f} MiB), "
        f"forward-backward {mib['gradient']:.0f} MiB, JAX device peak so far {_fmt(_jax_peak_mib(), 'MiB')}, "
        f"torchattacks peak {_fmt(ta_peak, 'MiB')}",
        flush=True,
    )
    rows.append(
        f"| {arch} | memory: PGD-10 program (XLA buffers) | {mib['pgd-10']:.0f} MiB; remat "
        f"{remat['pgd-10']:.0f} MiB; one gradient {mib['gradient']:.0f} MiB | torchattacks peak "
        f"{_fmt(ta_peak, 'MiB')} | | | |"
    )

    if args.suite_n > 0:
        r = bs.suite(bs.setup(arch, args.suite_n, torch, device), torch)
        times = ", ".join(f"{name} {t:.1f} s" for name, t in r.seconds_per_attack.items())
        print(
            f"  standard suite on {args.suite_n}: jaxadv {r.seconds:.1f} s ({times}; robust "
            f"{r.robust_accuracy:.1%}), AutoAttack {r.reference_seconds:.1f} s (robust "
            f"{r.reference_robust_accuracy:.1%})",
            flush=True,
        )
        suite_speedup = r.reference_seconds / r.seconds
        verdict = _verdict(suite_speedup >= SUITE_SPEEDUP_TARGET, accelerator and same_device)
        rows.append(
            f"| {arch} | standard suite, {args.suite_n} examples | {r.seconds:.1f} s, robust "
            f"{r.robust_accuracy:.1%} | AutoAttack {r.reference_seconds:.1f} s, robust "
            f"{r.reference_robust_accuracy:.1%} | {suite_speedup:.2f}x faster "
            f"| >= {SUITE_SPEEDUP_TARGET:g}x | {verdict} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="preact-resnet-18,wrn-28-10")
    parser.add_argument("--batch", type=int, default=128, help="images per PGD/APGD call")
    parser.add_argument("--suite-n", type=int, default=256, help="examples for the standard suite (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="WRN-16-1, batch 4, suite on 8, one round")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch, args.suite_n, args.repeats = "wrn-16-1", 4, 8, 1

    import torch

    jax_device = jax.devices()[0]
    accelerator = jax_device.platform != "cpu"
    device = "cuda" if jax_device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    torch_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    named = f"{jax_device.platform}: {jax_device.device_kind} (x{jax.device_count()})"
    print("machine")
    print(f"  jax device     {named}")
    print(f"  torch device   {device}" + (f": {torch_name}" if device == "cuda" else ""))
    print(f"  cpu            {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"  jax / torch    {jax.__version__} / {torch.__version__}")
    print(f"  load average   {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    rows = []
    for arch in args.models.split(","):
        rows += bench(arch.strip(), args, torch, device, accelerator)

    print(f"\nJAX on {named}; PyTorch on {torch_name}")
    if not accelerator:
        print("(a CPU: the targets are for an accelerator and are not judged here)")
    elif device == "cpu":
        print("(PyTorch has no CUDA device here: the rows against PyTorch are not on the same device)")
    print("| model | measurement | jaxadv | reference | ratio | target | verdict |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
