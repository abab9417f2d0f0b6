"""Attacks at real scale: RobustBench architectures against torchattacks and AutoAttack.

One script for every machine: it runs on whatever device JAX sees (CPU, GPU or
TPU) and puts PyTorch on the matching device (CUDA when JAX is on a GPU and
PyTorch has CUDA; otherwise the CPU), and names both in its header::

    python benchmarks/bench_scale.py                      # PreAct-ResNet-18 and WRN-28-10
    python benchmarks/bench_scale.py --models preact-resnet-18 --batch 32 --suite

Each model is RobustBench's own PyTorch architecture (its file read by path,
``pip install --no-deps robustbench``) with random weights and random
batch-norm statistics, converted with :func:`jaxadv.zoo.from_torch`, so both
libraries attack the same function (the script asserts the logits agree).
Inputs are random 32x32x3 images; labels are the model's own predictions.

Printed, from one run (minima over ``--repeats`` interleaved rounds):

* the floor: 10 jitted input-gradients of the cross-entropy, one after another;
* PGD-10 (L-inf, eps 8/255, step 2/255, random start): ``jaxadv.pgd`` as a
  direct call and under ``jax.jit``, ``torchattacks.PGD``; ratios to the floor
  and to torchattacks;
* APGD-CE with 100 iterations: ``jaxadv.apgd`` against AutoAttack's
  ``APGDAttack`` (same budget, one restart);
* memory: XLA's buffer assignment for the compiled PGD-10 program and for one
  forward-backward pass (``compiled.memory_analysis()``: arguments, outputs and
  temporaries), so the attack's overhead over a gradient is visible on any device;
* with ``--suite``: ``jaxadv.evaluate(suite="standard")`` against
  ``AutoAttack(version="standard")`` on the same examples: wall time and robust
  accuracy (random weights: the accuracies show both evaluations finish the
  same work, not how robust a trained model is).

Targets stated in ``benchmarks/RESULTS.md``: on CPU, PGD-10 no slower than
torchattacks' best; on an accelerator, PGD-10 at least 2x faster than
torchattacks, the standard suite at least 3x faster than AutoAttack's, and
the compiled attack within 1.05x of the gradient floor.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import zoo

EPS, ALPHA = 8 / 255, 2 / 255
# Row names shared with benchmarks/accelerator.py.
FLOOR, DIRECT, JITTED = "floor: 10 gradients", "jaxadv.pgd direct", "jax.jit(jaxadv.pgd)"
APGD, APGD_REFERENCE = "jaxadv.apgd (ce)", "AutoAttack APGDAttack (ce)"


def _robustbench(name: str) -> ModuleType:
    found = importlib.util.find_spec("robustbench")
    if found is None or not found.submodule_search_locations:
        raise SystemExit("needs RobustBench's architecture files: pip install --no-deps robustbench")
    root = Path(list(found.submodule_search_locations)[0])
    spec = importlib.util.spec_from_file_location(
        f"_rb_{name}", root / "model_zoo" / "architectures" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_model(arch: str, torch: Any) -> Any:
    """RobustBench's architecture ``arch`` with random weights and batch-norm statistics."""
    torch.manual_seed(0)
    if arch == "preact-resnet-18":
        model = _robustbench("resnet").PreActResNet18()
    elif arch.startswith("wrn-"):
        _, depth, width = arch.split("-")
        model = _robustbench("wide_resnet").WideResNet(depth=int(depth), widen_factor=int(width))
    else:
        raise SystemExit(f"no RobustBench reference wired up for {arch!r}")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Warm each variant up once, then time them in turn ``repeats`` times."""
    for fn in fns.values():
        _block(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            _block(fn())
            times[name].append(time.perf_counter() - start)
    return times


def _block(out: Any) -> None:
    """Wait for ``out``: JAX arrays, and PyTorch's queue when a leaf is a CUDA tensor."""
    for leaf in jax.tree_util.tree_leaves(out):
        if isinstance(leaf, jax.Array):
            leaf.block_until_ready()
        elif getattr(leaf, "is_cuda", False):
            import torch

            torch.cuda.synchronize()


def one_thread(torch: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with one PyTorch thread: on shared CPU cores PyTorch's OpenMP threads
    suffer badly from other load (4-5x slower here), so the CPU rows compare with this."""

    def run() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def _memory(compiled: Any) -> float:
    """Bytes XLA assigns to a compiled program (arguments + outputs + temporaries), in MiB."""
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return total / 2**20


class Setup(NamedTuple):
    """One model in both libraries, and one batch for both.

    Attributes:
      arch: the zoo name.
      model: RobustBench's PyTorch model (eval mode) on ``device``.
      module: the converted Flax module; ``variables`` its variables.
      logits_fn: ``jaxadv.from_flax(module, variables)``.
      x, y: the batch (NHWC float32 in [0, 1]) and the model's own predictions.
      xj, yj: the same on JAX's default device; xt, yt: on PyTorch's device (NCHW).
      device: PyTorch's device, ``"cuda"`` or ``"cpu"``.
      gap: the largest difference between the two models' logits on ``x``.
    """

    arch: str
    model: Any
    module: Any
    variables: Any
    logits_fn: Any
    x: np.ndarray
    y: np.ndarray
    xj: jax.Array
    yj: jax.Array
    xt: Any
    yt: Any
    device: str
    gap: float


def setup(arch: str, batch: int, torch: Any, device: str) -> Setup:
    """Build ``arch`` in PyTorch (random weights), convert it, and draw a random batch."""
    model = torch_model(arch, torch).to(device)
    module, variables = zoo.from_torch(arch, {k: v.cpu() for k, v in model.state_dict().items()})
    logits_fn = jaxadv.from_flax(module, variables)
    x = np.random.default_rng(0).uniform(0.0, 1.0, (batch, 32, 32, 3)).astype(np.float32)
    xj = jnp.asarray(x)
    y = np.asarray(jaxadv.predict(logits_fn, xj)).astype(np.int32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
    yt = torch.from_numpy(y.astype(np.int64)).to(device)
    with torch.no_grad():
        gap = float((model(xt).cpu() - torch.from_numpy(np.array(logits_fn(xj)))).abs().max())
    assert gap < 1e-3, f"converted logits differ from PyTorch's by {gap}"
    return Setup(arch, model, module, variables, logits_fn, x, y, xj, jnp.asarray(y), xt, yt, device, gap)


def _gradient_program(s: Setup) -> Any:
    onehot = jax.nn.one_hot(s.yj, s.logits_fn(s.xj[:1]).shape[-1])

    @jax.jit
    def gradient(f: Any, x: jax.Array) -> jax.Array:
        return jax.grad(lambda v: jnp.sum(jaxadv.cross_entropy(f(v), onehot)))(x)

    return gradient


def _pgd(f: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=EPS, step_size=ALPHA, steps=10)


def pgd_times(s: Setup, torch: Any, repeats: int) -> dict[str, list[float]]:
    """PGD-10 timings (seconds per call, ``repeats`` interleaved rounds after a warm-up):
    the floor of 10 jitted input-gradients, ``jaxadv.pgd`` direct and under ``jit``,
    ``torchattacks.PGD`` (and with one thread on CPU) when installed."""
    gradient = _gradient_program(s)

    def floor() -> Any:
        out = None
        for _ in range(10):
            out = gradient(s.logits_fn, s.xj)
            out.block_until_ready()
        return out

    jitted_pgd = jax.jit(_pgd)
    fns: dict[str, Callable[[], Any]] = {
        FLOOR: floor,
        DIRECT: lambda: _pgd(s.logits_fn, s.xj, s.yj),
        JITTED: lambda: jitted_pgd(s.logits_fn, s.xj, s.yj),
    }
    try:
        import torchattacks

        ta = torchattacks.PGD(s.model, eps=EPS, alpha=ALPHA, steps=10, random_start=True)
        fns["torchattacks.PGD"] = lambda: ta(s.xt, s.yt)
        if s.device == "cpu":
            fns["torchattacks.PGD 1 thread"] = one_thread(torch, lambda: ta(s.xt, s.yt))
    except ImportError:
        print("  (torchattacks not installed: pip install --no-deps torchattacks)")
    return interleaved(fns, repeats)


def apgd_times(s: Setup, torch: Any, repeats: int, steps: int = 100) -> dict[str, list[float]]:
    """APGD-CE timings: ``jaxadv.apgd`` and AutoAttack's ``APGDAttack`` (one thread on CPU)."""
    key = jax.random.key(0)
    fns: dict[str, Callable[[], Any]] = {
        APGD: lambda: jaxadv.apgd(s.logits_fn, s.xj, s.yj, key=key, eps=EPS, steps=steps),
    }
    try:
        from pyautoattack.autopgd_base import APGDAttack

        ref = APGDAttack(
            s.model, n_iter=steps, norm="Linf", eps=EPS, loss="ce", n_restarts=1, device=s.device
        )
        run: Callable[[], Any] = lambda: ref.perturb(s.xt, s.yt)  # noqa: E731
        if s.device == "cpu":
            fns[APGD_REFERENCE + " 1 thread"] = one_thread(torch, run)
        else:
            fns[APGD_REFERENCE] = run
    except ImportError:
        print("  (pyautoattack not installed)")
    return interleaved(fns, repeats)


def memory(s: Setup, *, remat: bool = False) -> dict[str, float]:
    """XLA's buffer assignment (arguments + outputs + temporaries, MiB) of the PGD-10 program
    and of one forward-backward pass; ``remat`` rebuilds the model with ``remat=True``."""
    logits_fn = s.logits_fn
    if remat:
        logits_fn = jaxadv.from_flax(s.module.clone(remat=True), s.variables)
    pgd_program = jax.jit(_pgd).lower(logits_fn, s.xj, s.yj).compile()
    grad_program = _gradient_program(s).lower(logits_fn, s.xj).compile()
    return {"pgd-10": _memory(pgd_program), "gradient": _memory(grad_program)}


class SuiteResult(NamedTuple):
    """The standard suite in both libraries on the same examples."""

    seconds: float
    robust_accuracy: float
    seconds_per_attack: dict[str, float]
    reference_seconds: float
    reference_robust_accuracy: float


def suite(s: Setup, torch: Any) -> SuiteResult:
    """``jaxadv.evaluate(suite="standard")`` (warm: a first run compiles) against
    ``AutoAttack(version="standard")`` (one PyTorch thread on CPU)."""
    import pyautoattack

    def ours() -> Any:
        return jaxadv.evaluate(
            s.logits_fn,
            s.x,
            s.y,
            eps=EPS,
            key=jax.random.key(0),
            suite="standard",
            progress=False,
            checks=False,
        )

    ours()  # compile
    start = time.perf_counter()
    result = ours()
    t_ours = time.perf_counter() - start
    aa = pyautoattack.AutoAttack(s.model, norm="Linf", eps=EPS, version="standard", device=s.device, seed=0)
    aa.verbose = False
    run = lambda: aa.run_standard_evaluation(s.xt, s.yt, batch_size=len(s.y))  # noqa: E731
    start = time.perf_counter()
    out = one_thread(torch, run)() if s.device == "cpu" else run()
    _block(out)
    t_aa = time.perf_counter() - start
    x_ref = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        ref_acc = float((s.model(x_ref).argmax(1) == s.yt).float().mean())
    return SuiteResult(t_ours, result.robust_accuracy, dict(result.seconds), t_aa, ref_acc)


def bench_model(arch: str, args: argparse.Namespace, torch: Any, device: str) -> None:
    s = setup(arch, args.batch, torch, device)
    print(f"\n{arch}: batch {args.batch} of 32x32x3, max logit gap to PyTorch {s.gap:.1e}")

    times = pgd_times(s, torch, args.repeats)
    base = min(times[FLOOR])
    torch_best = min((min(t) for n, t in times.items() if n.startswith("torchattacks")), default=None)
    print(f"  {'PGD-10':28s} {'min s':>8s} {'median s':>9s} {'/ floor':>8s} {'/ torch best':>13s}")
    for name, ts in times.items():
        rel = f"{min(ts) / torch_best:12.2f}x" if torch_best else ""
        print(f"  {name:28s} {min(ts):8.3f} {np.median(ts):9.3f} {min(ts) / base:7.2f}x {rel}")

    times = apgd_times(s, torch, max(1, args.repeats - 1))
    first = min(times[APGD])
    print(f"  {'APGD-CE-100':28s} {'min s':>8s} {'median s':>9s} {'/ jaxadv':>9s}")
    for name, ts in times.items():
        print(f"  {name:28s} {min(ts):8.3f} {np.median(ts):9.3f} {min(ts) / first:8.2f}x")

    mib = memory(s)
    print(
        f"  memory (XLA buffers): PGD-10 program {mib['pgd-10']:.0f} MiB, "
        f"one forward-backward {mib['gradient']:.0f} MiB"
    )

    if args.suite:
        r = suite(s, torch)
        print(
            f"  standard suite: jaxadv {r.seconds:.1f} s (robust {r.robust_accuracy:.1%}), "
            f"AutoAttack {r.reference_seconds:.1f} s (robust {r.reference_robust_accuracy:.1%}); "
            f"time ratio {r.seconds / r.reference_seconds:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="preact-resnet-18,wrn-28-10")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--suite", action="store_true", help="also the standard suite against AutoAttack")
    args = parser.parse_args()

    import torch

    jax_device = jax.devices()[0]
    device = "cuda" if jax_device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    print("machine")
    print(f"  jax device     {jax_device.platform}: {jax_device.device_kind} (x{jax.device_count()})")
    print(f"  torch device   {device}" + (f": {torch.cuda.get_device_name()}" if device == "cuda" else ""))
    print(f"  cpu            {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"  jax / torch    {jax.__version__} / {torch.__version__}")
    print(f"  load average   {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for arch in args.models.split(","):
        bench_model(arch.strip(), args, torch, device)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
