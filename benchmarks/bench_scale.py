"""Attacks at real scale: RobustBench architectures against PyTorch, torchattacks and AutoAttack.

One script for every machine: it runs on whatever device JAX sees (CPU, GPU or
TPU) and puts PyTorch on the matching device (CUDA when JAX is on a GPU and
PyTorch has CUDA; otherwise the CPU), and names both in its header::

    python benchmarks/bench_scale.py                  # the whole table (long: run it on a quiet machine)
    python benchmarks/bench_scale.py --only gradient,pgd --models preact-resnet-18
    python benchmarks/bench_scale.py --quick          # small batches, one round: checks the script runs

Each model is RobustBench's own PyTorch architecture (its file read by path,
``pip install --no-deps robustbench``) with random weights and random
batch-norm statistics, converted with :func:`jaxadv.zoo.from_torch`, so both
libraries compute the same function (the script asserts the logits agree).
Inputs are random 32x32x3 images; labels are the model's own predictions.

Sections (``--only``), all timed as minima over ``--repeats`` interleaved
rounds after a warm-up, PyTorch on the CPU with 1 thread and with all cores
(its multi-threaded figure collapses when other processes share the cores,
its 1-thread figure is slower on an idle machine: both are printed, and ratios
are taken against the faster):

* ``gradient``: the forward pass and the input gradient of the cross-entropy
  (sum over the batch): ``jax.jit(jax.grad(...))`` with the weights as
  arguments, the same through the library's convolution rewrite (the form the
  attacks' loops run, kernels prepared at every call), and PyTorch's
  ``autograd.grad``; on a CPU each JAX row twice, compiled with XLA's default
  options (YNNPACK convolutions) and with those jaxadv gives its own programs
  (Eigen convolutions, ``jaxadv.config`` ``cpu_eigen_convolutions``);
* ``pgd``: PGD-10 (L-inf, eps 8/255, step 2/255, random start): ``jaxadv.pgd``
  direct and under ``jax.jit`` (XLA's default options, and jaxadv's),
  ``torchattacks.PGD``; the floor of 10 jitted input gradients compiled as
  jaxadv compiles; the attack's cost per step;
* ``apgd``: APGD-CE with 100 iterations: ``jaxadv.apgd`` against AutoAttack's
  ``APGDAttack`` (same budget, one restart), for ``--apgd-models``;
* ``digits``: BIM-10 on the bundled 8x8 digits CNN (batch 397) against
  ``torchattacks.BIM`` on the same weights;
* ``compile``: the first call of PGD-10 and of ``jaxadv.evaluate(suite="standard")``
  (on 8 images) on the first model, each in a fresh process (tracing and
  compilation included), next to the warm time; PGD-10 again with JAX's
  persistent compilation cache, filled by a first process and read by a second;
* ``memory``: XLA's buffer assignment for the PGD-10 program and one
  forward-backward pass;
* ``suite`` (not in the default set): ``jaxadv.evaluate(suite="standard")``
  against ``AutoAttack(version="standard")`` on the same random-weight model
  (the MNIST-scale comparison on a robust model is ``bench_evaluate.py
  --mnist-scale``).

The targets of ``benchmarks/RESULTS.md`` are printed beside the ratios: on a
CPU, the input gradient and PGD-10 / APGD-CE within 1.15x of PyTorch's best,
the digits BIM-10 below torchattacks'; on an accelerator (``accelerator.py``),
PGD-10 at least 2x faster than torchattacks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import zoo
from jaxadv._core import compile as compile_options
from jaxadv._core import conv_rewrite

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, load_average  # noqa: E402

#: Within this factor of PyTorch's best thread count (the CPU targets).
CPU_TARGET = 1.15
#: Images of the first-call measurement of evaluate (its Square runs 5000 forward passes).
EVALUATE_BATCH = 8

EPS, ALPHA = 8 / 255, 2 / 255
# Row names shared with benchmarks/accelerator.py.
FLOOR, DIRECT, JITTED = "floor: 10 gradients", "jaxadv.pgd direct", "jax.jit(jaxadv.pgd)"
JITTED_TUNED = "jax.jit(jaxadv.pgd), jaxadv's options"
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


def with_threads(torch: Any, n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with ``n`` PyTorch threads (restored after)."""

    def run() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def one_thread(torch: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with one PyTorch thread: on shared CPU cores PyTorch's OpenMP threads
    suffer badly from other load (4-5x slower here), so the CPU rows compare with this too."""
    return with_threads(torch, 1, fn)


def torch_variants(torch: Any, device: str, name: str, fn: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """``{name + " 1 thread": ..., name + " N threads": ...}`` on a CPU (N the core count);
    ``{name: fn}`` on a GPU."""
    if device != "cpu":
        return {name: fn}
    cores = os.cpu_count() or 1
    out = {f"{name} 1 thread": with_threads(torch, 1, fn)}
    if cores > 1:
        out[f"{name} {cores} threads"] = with_threads(torch, cores, fn)
    return out


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


def _options(default: bool) -> dict[str, Any]:
    """XLA's defaults, or the compile options jaxadv's own programs get (convolutions on
    Eigen on a CPU, :mod:`jaxadv._core.compile`)."""
    return {} if default or not compile_options.eigen_convolutions() else dict(compile_options.EIGEN_OPTIONS)


def _gradient_program(s: Setup, *, default: bool = False) -> Any:
    """One jitted input gradient, compiled as jaxadv compiles its programs (``default``:
    with XLA's default options, as a user's own ``jit`` is)."""
    onehot = jax.nn.one_hot(s.yj, s.logits_fn(s.xj[:1]).shape[-1])

    def gradient(f: Any, x: jax.Array) -> jax.Array:
        return jax.grad(lambda v: jnp.sum(jaxadv.cross_entropy(f(v), onehot)))(x)

    return jax.jit(gradient, compiler_options=_options(default))


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
    if _options(False):
        tuned = jax.jit(_pgd, compiler_options=_options(False))
        fns[JITTED_TUNED] = lambda: tuned(s.logits_fn, s.xj, s.yj)
    try:
        import torchattacks

        ta = torchattacks.PGD(s.model, eps=EPS, alpha=ALPHA, steps=10, random_start=True)
        fns.update(torch_variants(torch, s.device, "torchattacks.PGD", lambda: ta(s.xt, s.yt)))
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
        fns.update(torch_variants(torch, s.device, APGD_REFERENCE, lambda: ref.perturb(s.xt, s.yt)))
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


def gradient_times(s: Setup, torch: Any, repeats: int) -> dict[str, list[float]]:
    """The forward pass and the input gradient of the summed cross-entropy, in both
    libraries (``repeats`` interleaved rounds after a warm-up)."""
    onehot = jax.nn.one_hot(s.yj, s.logits_fn(s.xj[:1]).shape[-1])

    def loss_grad(f: Any, x: jax.Array) -> jax.Array:
        return jax.grad(lambda v: jnp.sum(jaxadv.cross_entropy(f(v), onehot)))(x)

    fns: dict[str, Callable[[], Any]] = {}
    # XLA's default options (YNNPACK convolutions on a CPU), then jaxadv's (Eigen's), if other.
    for default in (True, False) if _options(False) else (True,):
        tag = ", XLA default" if default else ", jaxadv's options"
        forward = jax.jit(lambda f, x: f(x), compiler_options=_options(default))
        gradient = _gradient_program(s, default=default)
        rewritten = jax.jit(conv_rewrite.rewrite(loss_grad), compiler_options=_options(default))
        fns["jax forward" + tag] = lambda forward=forward: forward(s.logits_fn, s.xj)
        fns["jax input gradient" + tag] = lambda gradient=gradient: gradient(s.logits_fn, s.xj)
        fns["jax input gradient, rewritten" + tag] = lambda rewritten=rewritten: rewritten(s.logits_fn, s.xj)

    def torch_forward() -> Any:
        with torch.no_grad():
            return s.model(s.xt)

    def torch_gradient() -> Any:
        x = s.xt.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(s.model(x), s.yt, reduction="sum")
        return torch.autograd.grad(loss, x)[0]

    fns.update(torch_variants(torch, s.device, "torch forward", torch_forward))
    fns.update(torch_variants(torch, s.device, "torch input gradient", torch_gradient))
    return interleaved(fns, repeats)


def _verdict(ratio: float, target: float) -> str:
    return "met" if ratio <= target else "NOT met"


def _print_rows(title: str, times: dict[str, list[float]], reference: str, target: float | None) -> None:
    """One block of rows: each variant's minimum and median; JAX rows as a ratio to the
    fastest row whose name starts with ``reference``."""
    best = min((min(t) for n, t in times.items() if n.startswith(reference)), default=None)
    print(f"  {title:40s} {'min s':>9s} {'median s':>9s} {'/ best ' + reference.split()[0]:>16s}")
    for name, ts in times.items():
        ratio = ""
        if best and not name.startswith(reference):
            ratio = f"{min(ts) / best:15.2f}x"
            if target is not None:
                ratio += f"  (target <= {target:g}x: {_verdict(min(ts) / best, target)})"
        print(f"  {name:40s} {min(ts):9.3f} {np.median(ts):9.3f} {ratio}")


def bench_model(arch: str, args: argparse.Namespace, torch: Any, device: str) -> None:
    s = setup(arch, args.batch, torch, device)
    target = CPU_TARGET if device == "cpu" else None
    print(
        f"\n{arch}: batch {args.batch} of 32x32x3, max logit gap to PyTorch {s.gap:.1e}; "
        f"load average {load_average()}",
        flush=True,
    )
    if "gradient" in args.only:
        times = gradient_times(s, torch, args.repeats)
        fwd = {n: t for n, t in times.items() if "forward" in n}
        grad = {n: t for n, t in times.items() if "gradient" in n}
        _print_rows("forward", fwd, "torch", None)
        _print_rows("input gradient", grad, "torch", target)
    if "pgd" in args.only:
        times = pgd_times(s, torch, args.repeats)
        _print_rows("PGD-10", times, "torchattacks", target)
        base = min(times[FLOOR])
        print(
            f"  per PGD step: direct {min(times[DIRECT]) / 10:.3f} s, jit {min(times[JITTED]) / 10:.3f} s; "
            f"one jitted gradient {base / 10:.3f} s (direct / floor {min(times[DIRECT]) / base:.2f}x)",
            flush=True,
        )
    if "apgd" in args.only and arch in args.apgd_models.split(","):
        times = apgd_times(s, torch, max(1, args.repeats - 1), args.apgd_steps)
        _print_rows(f"APGD-CE-{args.apgd_steps}", times, APGD_REFERENCE, target)
    if "memory" in args.only:
        mib = memory(s)
        print(
            f"  memory (XLA buffers): PGD-10 program {mib['pgd-10']:.0f} MiB, "
            f"one forward-backward {mib['gradient']:.0f} MiB",
            flush=True,
        )
    if "suite" in args.only:
        r = suite(s, torch)
        print(
            f"  standard suite: jaxadv {r.seconds:.1f} s (robust {r.robust_accuracy:.1%}), "
            f"AutoAttack {r.reference_seconds:.1f} s (robust {r.reference_robust_accuracy:.1%}); "
            f"time ratio {r.seconds / r.reference_seconds:.2f}x",
            flush=True,
        )


def bench_digits(args: argparse.Namespace, torch: Any) -> None:
    """BIM-10 on the bundled digits CNN (8x8x1, batch 397) against torchattacks.BIM."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torch_models import TorchDigitsCNN, max_logit_gap, to_nchw

    from jaxadv import examples

    _, test = examples.load_digits(0)
    module = examples.DigitsCNN()
    x, y = jnp.asarray(test.x), jnp.asarray(test.y)
    variables = module.init(jax.random.key(0), x[:1])
    f = jaxadv.from_flax(module, variables)
    twin = TorchDigitsCNN(variables, input_size=8).eval()
    assert max_logit_gap(twin, f, test.x) < 1e-4
    eps, alpha = 0.1, 0.025
    jitted = jax.jit(lambda f, x, y: jaxadv.bim(f, x, y, eps=eps, step_size=alpha, steps=10))
    fns: dict[str, Callable[[], Any]] = {
        "jaxadv.bim direct": lambda: jaxadv.bim(f, x, y, eps=eps, step_size=alpha, steps=10),
        "jax.jit(jaxadv.bim)": lambda: jitted(f, x, y),
    }
    try:
        import torchattacks

        ta = torchattacks.BIM(twin, eps=eps, alpha=alpha, steps=10)
        xt, yt = to_nchw(test.x), torch.from_numpy(test.y.astype(np.int64))
        fns.update(torch_variants(torch, "cpu", "torchattacks.BIM", lambda: ta(xt, yt)))
    except ImportError:
        print("  (torchattacks not installed)")
    print(f"\ndigits CNN (8x8x1), BIM-10, batch {len(y)}; load average {load_average()}", flush=True)
    _print_rows("BIM-10", interleaved(fns, max(args.repeats, 5)), "torchattacks", 1.0)


def _first_call(what: str, arch: str, batch: int) -> dict[str, float]:
    """In this process: the first and a second call of ``what`` ("pgd" or "evaluate")."""
    import torch

    if what == "evaluate":
        batch = min(batch, EVALUATE_BATCH)
    s = setup(arch, batch, torch, "cpu" if jax.default_backend() == "cpu" else "cuda")
    if what == "pgd":
        run: Callable[[], Any] = lambda: _pgd(s.logits_fn, s.xj, s.yj)  # noqa: E731
    else:

        def run() -> Any:
            return jaxadv.evaluate(
                s.logits_fn, s.x, s.y, eps=EPS, key=jax.random.key(0), suite="standard", progress=False
            ).robust_accuracy

    out = {}
    for label in ("first", "second"):
        start = time.perf_counter()
        _block(run())
        out[label] = time.perf_counter() - start
    return out


def bench_compile(args: argparse.Namespace) -> None:
    """First call (tracing + compilation + one run) against a warm call, in fresh processes;
    then the same with JAX's persistent compilation cache (one process fills it, the next reads it)."""
    arch = args.models.split(",")[0].strip()
    print(f"\nfirst call against warm, {arch}, batch {args.batch}, fresh processes", flush=True)
    print(f"  {'program':34s} {'first s':>9s} {'warm s':>9s} {'compile ~':>10s}")
    cache = tempfile.mkdtemp(prefix="jaxadv-jax-cache-")
    for what in ("pgd", "evaluate"):
        for label, env in (
            ("", {}),
            (", persistent cache (filling)", {"JAX_COMPILATION_CACHE_DIR": cache}),
            (", persistent cache (reading)", {"JAX_COMPILATION_CACHE_DIR": cache}),
        )[: 3 if what == "pgd" else 1]:
            command = [
                sys.executable,
                __file__,
                "--first-call",
                what,
                "--models",
                arch,
                "--batch",
                str(args.batch),
            ]
            env = {
                **os.environ,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                **env,
            }
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode != 0 or not lines:
                print(f"  {what + label:34s} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            t = json.loads(lines[-1])
            name = (
                "PGD-10" if what == "pgd" else f"evaluate(standard), {min(args.batch, EVALUATE_BATCH)} images"
            ) + label
            print(
                f"  {name:34s} {t['first']:9.2f} {t['second']:9.2f} {t['first'] - t['second']:10.2f}",
                flush=True,
            )


SECTIONS = ("gradient", "pgd", "apgd", "digits", "compile", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="preact-resnet-18,wrn-28-10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}, suite"
    )
    parser.add_argument("--apgd-models", default="preact-resnet-18", help="models that get the APGD section")
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--suite", action="store_true", help="add the 'suite' section")
    parser.add_argument("--quick", action="store_true", help="batch 4, one round, 10 APGD steps: a smoke run")
    parser.add_argument("--first-call", choices=("pgd", "evaluate"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_call:  # a fresh process of bench_compile
        print(json.dumps(_first_call(args.first_call, args.models.split(",")[0], args.batch)))
        return
    if args.quick:
        args.batch, args.repeats, args.apgd_steps = 4, 1, 10
    args.only = {o.strip() for o in args.only.split(",")} | ({"suite"} if args.suite else set())

    import torch

    jax_device = jax.devices()[0]
    device = "cuda" if jax_device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    print(
        describe(
            **{
                "jax device": f"{jax_device.platform}: {jax_device.device_kind} (x{jax.device_count()})",
                "torch": f"{torch.__version__} on {device}"
                + (f": {torch.cuda.get_device_name()}" if device == "cuda" else ""),
                "conv rewrite": f"{jaxadv.config.read('conv_rewrite')} (jaxadv.config)",
                "eigen convs": f"{jaxadv.config.read('cpu_eigen_convolutions')} (jaxadv.config)",
            }
        ),
        flush=True,
    )
    if args.only & {"gradient", "pgd", "apgd", "memory", "suite"}:
        for arch in args.models.split(","):
            bench_model(arch.strip(), args, torch, device)
    if "digits" in args.only:
        bench_digits(args, torch)
    if "compile" in args.only:
        bench_compile(args)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
