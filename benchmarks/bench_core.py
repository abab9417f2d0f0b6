"""Core benchmark: cost of the iterative engine against the gradient floor, compile
time against ``steps``, and PGD-10 against torchattacks on the same weights.

Run from the repository root::

    python benchmarks/bench_core.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_core.py --quick    # k = 10 only, fewer repeats

Printed, from one run:

* ``time(BIM-k) / (k * time(one jitted input-gradient))`` for k = 10 and 100, on
  the digits CNN and a 3x1024 MLP, for each way of running the loop: the direct
  call (``loop="auto"``: the whole loop as one cached compiled program), the
  direct call with ``loop="host"`` (a Python loop of one compiled step), the same attack
  inside ``jax.jit`` (``loop="auto"``: the engine's ``lax.fori_loop``), and the
  same step in a hand-written ``fori_loop`` without the engine's convolution
  rewrite (rolled, ``unroll=4``, fully unrolled for k = 10); the full run adds
  the CNN on 32x32x3 images (k = 10), where that rewrite matters most;
* the compile time of the jitted attack at ``steps=10`` and ``steps=1000``;
* with PyTorch and torchattacks installed, our PGD-10 time over
  ``torchattacks.PGD`` on the same architecture with the same weights (PyTorch
  with 2 threads, and with 1 thread, which suffers less from shared cores).

Timings: each variant is warmed up, then the variants are run in turn
(interleaved, so that load from other processes hits all of them alike) and
the minimum and median over the repeats are reported; ratios use the minima.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import jaxadv
from jaxadv import examples
from jaxadv.attacks.iterative import projected_gradient
from jaxadv.compose import loop as composed
from jaxadv.gradients import loss_and_grad
from jaxadv.losses import cross_entropy
from jaxadv.models import combine_model, split_model

EPS = 0.1
BATCH = 397


# --- machine ------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def print_machine(torch_version: str | None, torchattacks_version: str | None) -> None:
    print("machine")
    print(f"  cpu            {cpu_model()}")
    print(f"  cores          {os.cpu_count()} (affinity: {len(os.sched_getaffinity(0))})")
    print(f"  python         {platform.python_version()} on {platform.system()} {platform.release()}")
    print(f"  jax / jaxlib   {jax.__version__} / {jaxlib.__version__}, backend {jax.default_backend()}")
    print(f"  torch          {torch_version or 'not installed'}")
    print(f"  torchattacks   {torchattacks_version or 'not installed'}")
    print(f"  XLA_FLAGS      {os.environ.get('XLA_FLAGS', '(unset)')}")
    print(f"  load average   {load_average()} (other processes share the cores)")


# --- timing -------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up each, then ``repeats``
    rounds that run every function once, in turn."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times


def spread(ts: list[float]) -> str:
    """``min / median`` in milliseconds, and the relative spread of the median."""
    lo, med = min(ts), statistics.median(ts)
    return f"{1e3 * lo:9.2f} {1e3 * med:9.2f}  (+{100 * (med / lo - 1):3.0f}%)"


# --- models -------------------------------------------------------------------


def make_models(x: np.ndarray, large: bool = False) -> dict[str, tuple[Any, Any]]:
    """The digits CNN and a 3x1024 MLP, random init (weights do not change timings);
    with ``large``, also the same CNN on 32x32x3 images (batch 128, k = 10 only)."""
    models: dict[str, tuple[Any, Any]] = {}
    for name, module in (
        ("cnn", examples.DigitsCNN()),
        ("mlp3x1024", examples.DigitsMLP(hidden=(1024, 1024, 1024))),
    ):
        variables = module.init(jax.random.key(0), jnp.asarray(x[:1]))
        models[name] = (module, variables)
    if large:
        module = examples.DigitsCNN()
        models["cnn32x32x3"] = (module, module.init(jax.random.key(0), _large_images()[0][:1]))
    return models


def gradient_fn(logits_fn: Any) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """One jitted input-gradient of the summed cross-entropy, parameters traced:
    exactly the gradient that one attack step takes."""
    model, _ = split_model(logits_fn)

    @jax.jit
    def grad(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return loss_and_grad(combine_model(model, params), x, y, loss=cross_entropy, targeted=False)[2]

    return grad


def fori_variant(steps: int, unroll: int | bool) -> Callable[..., jax.Array]:
    """BIM inside ``jit`` as a plain ``fori_loop`` with ``unroll`` over the engine's
    step, without the engine's convolution rewrite (what a hand-written loop gets)."""

    @jax.jit
    def run(logits_fn: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        p = jaxadv.attacks.base.prepare(logits_fn, x, y, bounds=(0.0, 1.0), eps=EPS)
        alpha = jnp.asarray(2.5 * EPS / steps, jnp.float32)
        operands = composed.Operands(
            p.params, p.x, p.labels, p.lo, p.hi, p.eps, alpha, jax.random.key(0), projected_gradient()
        )
        static = composed.Static(p.model, False, p.dtype)
        state = composed.LoopState(p.x, (), None)

        def body(i: Any, s: Any) -> Any:
            return composed.attack_step(i, s, operands, static)

        return jax.lax.fori_loop(0, steps, body, state, unroll=unroll).x

    return run


# --- sections -----------------------------------------------------------------


def bench_floor(
    models: dict[str, Any], x: jax.Array, y: jax.Array, ks: tuple[int, ...], repeats: int
) -> None:
    print(f"\nBIM-k / (k x one jitted input-gradient), batch {BATCH} (cnn32x32x3: batch 128)")
    print(f"  {'model':11s} {'k':>4s} {'variant':22s} {'min ms':>9s} {'med ms':>9s}  spread   ratio")
    for name, (module, variables) in models.items():
        mx, my, mks = (*_large_images(), ks[:1]) if name == "cnn32x32x3" else (x, y, ks)
        logits_fn = jaxadv.from_flax(module, variables)
        _, params = split_model(logits_fn)
        grad = gradient_fn(logits_fn)
        for k in mks:
            jitted = jax.jit(functools.partial(_bim_auto, steps=k))
            fns: dict[str, Callable[[], Any]] = {
                "floor: k gradients": functools.partial(_k_gradients, grad, params, mx, my, k),
                "direct (compiled)": functools.partial(jaxadv.bim, logits_fn, mx, my, eps=EPS, steps=k),
                "direct loop='host'": functools.partial(
                    jaxadv.bim, logits_fn, mx, my, eps=EPS, steps=k, loop="host"
                ),
                "jit (engine fori)": functools.partial(jitted, logits_fn, mx, my),
                "jit plain fori_loop": functools.partial(fori_variant(k, 1), logits_fn, mx, my),
                "jit plain unroll=4": functools.partial(fori_variant(k, 4), logits_fn, mx, my),
            }
            if k <= 10:
                fns["jit fully unrolled"] = functools.partial(fori_variant(k, True), logits_fn, mx, my)
            times = interleaved(fns, repeats)
            floor = min(times["floor: k gradients"])
            for variant, ts in times.items():
                print(f"  {name:11s} {k:4d} {variant:22s} {spread(ts)}  {min(ts) / floor:5.2f}x")


def _large_images() -> tuple[jax.Array, jax.Array]:
    """128 random 32x32x3 images: no conv input-gradient has a kernel larger than its input."""
    x = jax.random.uniform(jax.random.key(1), (128, 32, 32, 3))
    return x, jnp.arange(128, dtype=jnp.int32) % 10


def _bim_auto(logits_fn: Any, x: jax.Array, y: jax.Array, *, steps: int) -> jax.Array:
    return jaxadv.bim(logits_fn, x, y, eps=EPS, steps=steps)


def _k_gradients(
    grad: Callable[..., jax.Array], params: Any, x: jax.Array, y: jax.Array, k: int
) -> jax.Array:
    """``k`` jitted gradients, each waited for (no two overlap): the floor."""
    out = x
    for _ in range(k):
        out = jax.block_until_ready(grad(params, x, y))
    return out


def bench_compile(
    models: dict[str, Any], x: jax.Array, y: jax.Array, steps: tuple[int, ...], repeats: int
) -> None:
    print("\ncompile time of jax.jit(bim) (fori_loop), .lower().compile(), fresh function each time")
    for name, (module, variables) in models.items():
        logits_fn = jaxadv.from_flax(module, variables)
        medians = {}
        for s in steps:
            ts = []
            for _ in range(repeats):
                fn = jax.jit(functools.partial(_bim_auto, steps=s))
                start = time.perf_counter()
                fn.lower(logits_fn, x, y).compile()
                ts.append(time.perf_counter() - start)
            medians[s] = statistics.median(ts)
            print(f"  {name:10s} steps={s:5d}  min {min(ts):6.3f} s  median {medians[s]:6.3f} s")
        lo, hi = min(steps), max(steps)
        print(f"  {name:10s} ratio steps={hi} / steps={lo}: {medians[hi] / medians[lo]:.2f} (goal <= 1.5)")


# --- torchattacks ---------------------------------------------------------------


def torch_cnn(variables: Any) -> Any:
    """The digits CNN in PyTorch, with the Flax weights copied over."""
    import torch
    from torch import nn

    p = variables["params"]

    def conv(layer: Any, cin: int, cout: int) -> Any:
        c = nn.Conv2d(cin, cout, 3, stride=2)
        hwio = np.asarray(layer["kernel"])
        c.weight.data = torch.from_numpy(hwio.transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
        c.bias.data = torch.from_numpy(np.asarray(layer["bias"]).copy())
        return c

    c0 = p["Conv_0"]["kernel"].shape
    c1 = p["Conv_1"]["kernel"].shape
    dense = nn.Linear(p["Dense_0"]["kernel"].shape[0], p["Dense_0"]["kernel"].shape[1])
    # Flax flattens [h, w, c] (NHWC); PyTorch flattens [c, h, w] (NCHW): permute the rows once.
    kernel = np.asarray(p["Dense_0"]["kernel"])
    side = int(round((kernel.shape[0] // c1[3]) ** 0.5))
    kernel = kernel.reshape(side, side, c1[3], -1).transpose(2, 0, 1, 3).reshape(kernel.shape[0], -1)
    dense.weight.data = torch.from_numpy(kernel.T.copy())
    dense.bias.data = torch.from_numpy(np.asarray(p["Dense_0"]["bias"]).copy())
    # Flax "SAME" padding of a 3x3, stride-2 conv on an even size pads 0 before and 1 after.
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)),
        conv(p["Conv_0"], c0[2], c0[3]),
        nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)),
        conv(p["Conv_1"], c1[2], c1[3]),
        nn.ReLU(),
        nn.Flatten(),
        dense,
    ).eval()


def torch_mlp(variables: Any) -> Any:
    """A Flax DigitsMLP in PyTorch (NCHW with one channel flattens like NHWC)."""
    import torch
    from torch import nn

    p = variables["params"]
    layers: list[Any] = [nn.Flatten()]
    names = sorted(p, key=lambda n: int(n.split("_")[1]))
    for i, n in enumerate(names):
        k = np.asarray(p[n]["kernel"])
        lin = nn.Linear(k.shape[0], k.shape[1])
        lin.weight.data = torch.from_numpy(k.T.copy())
        lin.bias.data = torch.from_numpy(np.asarray(p[n]["bias"]).copy())
        layers.append(lin)
        if i < len(names) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def bench_torch(models: dict[str, Any], x: jax.Array, y: jax.Array, repeats: int) -> None:
    try:
        import torch
        import torchattacks
    except ImportError as e:
        print(
            f"\nPGD-10 vs torchattacks: skipped ({e.name} not installed; pip install -e '.[bench]' "
            "then pip install --no-deps torchattacks)"
        )
        return
    torch.set_num_threads(2)
    steps, alpha = 10, 2.5 * EPS / 10
    print(
        f"\nPGD-10 vs torchattacks.PGD (eps={EPS}, alpha={alpha}, random start, batch {BATCH}, "
        f"torch threads {torch.get_num_threads()})"
    )
    print(
        f"  {'model':10s} {'variant':26s} {'min ms':>9s} {'med ms':>9s}  spread   ratio to faster torch row"
    )
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
    yt = torch.from_numpy(np.asarray(y).astype(np.int64))
    for name, (module, variables) in models.items():
        net = torch_cnn(variables) if name == "cnn" else torch_mlp(variables)
        logits_fn = jaxadv.from_flax(module, variables)
        with torch.no_grad():
            ours = np.asarray(jaxadv.logits(logits_fn, x))
            theirs = net(xt).numpy()
        err = float(np.max(np.abs(ours - theirs)))
        assert err <= 1e-4, f"{name}: Flax and PyTorch logits differ by {err}"
        atk = torchattacks.PGD(net, eps=EPS, alpha=alpha, steps=steps, random_start=True)
        key = jax.random.key(0)
        pgd_jit = jax.jit(functools.partial(_pgd_auto, steps=steps, alpha=alpha))
        fns: dict[str, Callable[[], Any]] = {
            "torchattacks.PGD": lambda atk=atk: atk(xt, yt),
            "torchattacks.PGD 1 thread": functools.partial(_one_thread, atk, xt, yt),
            "jaxadv.pgd direct": functools.partial(
                jaxadv.pgd, logits_fn, x, y, key=key, eps=EPS, step_size=alpha, steps=steps
            ),
            "jax.jit(jaxadv.pgd)": functools.partial(pgd_jit, logits_fn, x, y, key),
        }
        times = interleaved(fns, repeats)
        # Against the faster PyTorch row: conservative for jaxadv on a loaded machine.
        ref = min(min(times["torchattacks.PGD"]), min(times["torchattacks.PGD 1 thread"]))
        print(f"  {name:10s} (max |logits difference| Flax vs PyTorch: {err:.1e})")
        for variant, ts in times.items():
            print(f"  {name:10s} {variant:26s} {spread(ts)}  {min(ts) / ref:5.2f}x")


def _one_thread(atk: Any, x: Any, y: Any) -> Any:
    """The attack with one PyTorch thread (less exposed to other processes' load)."""
    import torch

    torch.set_num_threads(1)
    try:
        return atk(x, y)
    finally:
        torch.set_num_threads(2)


def _pgd_auto(logits_fn: Any, x: jax.Array, y: jax.Array, key: Any, *, steps: int, alpha: float) -> jax.Array:
    return jaxadv.pgd(logits_fn, x, y, key=key, eps=EPS, step_size=alpha, steps=steps)


# --- main ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="k = 10 only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per variant")
    parser.add_argument(
        "--only", choices=("floor", "compile", "torch"), default=None, help="run one section only"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    ks = (10,) if args.quick else (10, 100)

    try:
        import torch
        import torchattacks

        tv: str | None = torch.__version__
        tav: str | None = torchattacks.__version__
    except ImportError:
        tv = tav = None
    print_machine(tv, tav)

    _, test = examples.load_digits(0)
    x, y = jnp.asarray(test.x[:BATCH]), jnp.asarray(test.y[:BATCH])
    models = make_models(test.x)
    if args.only in (None, "floor"):
        bench_floor(make_models(test.x, large=not args.quick), x, y, ks, repeats)
    if args.only in (None, "compile"):
        bench_compile(models, x, y, (10, 1000), 2 if args.quick else 3)
    if args.only in (None, "torch"):
        bench_torch(models, x, y, repeats)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
