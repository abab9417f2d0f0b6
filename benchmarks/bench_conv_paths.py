"""Which path each convolution of an input gradient takes on XLA:CPU, and how long it runs.

For a zoo model (random weights; the architecture is what matters) this compiles

* ``gradient``: one jitted input gradient of the cross-entropy, the weights
  passed as arguments (as every attack passes them), as XLA compiles it alone;
* ``gradient, rewritten``: the same through the library's convolution rewrite
  (:mod:`jaxadv._core.conv_rewrite`), which the attacks' loops get;
* ``PGD-10`` four ways: the rewrite off (a plain ``fori_loop``), the layout part
  only (what the library did before the phase split and the hoisting), the
  phase split without hoisting, and the whole rewrite,

then reads every convolution in the optimised HLO (the forward ones and the
input-gradient ones, by the layer named in their metadata) and says which path
it runs on: ``YNNPACK`` (a ``ynn_fusion``, the fast path the forward pass
uses), ``Eigen`` (a canonical ``convolution`` instruction: Eigen's
convolution, with input dilation done by Eigen) or ``naive`` (any other
layout, or a convolution fused into a loop fusion: XLA's elemental emitter,
a loop nest). Each program then runs under ``jax.profiler`` ``--rounds``
times; an operation's time is its minimum over the rounds (the sum of its
events in one round), which shrugs off most of the load of a shared machine.
A loop's operations are reported per step.

    python benchmarks/bench_conv_paths.py                       # both models, batch 32
    python benchmarks/bench_conv_paths.py --models preact-resnet-18 --batch 8 --rounds 3
    python benchmarks/bench_conv_paths.py --dump /tmp/hlo       # also write the optimised HLO

Printed: the machine (CPU model, vector extensions, load average), per model a
table of every convolution in the plain gradient and in the rewritten PGD
step, then one line per program: forward convolutions, input-gradient
convolutions by path, kernel preparation (reversal, transposition, phase
split of the kernels), everything else, the sum, and the program's wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv import config, zoo
from jaxadv._core import conv_rewrite

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


class Op(NamedTuple):
    """One operation (thunk) of a compiled program."""

    name: str  # the HLO instruction name, as the profiler names its events
    computation: str  # "entry" or "loop" (a while body)
    kind: str  # "forward conv", "input-gradient conv", "kernel preparation", "other"
    layer: str  # the layer a convolution belongs to, "" otherwise
    form: str  # the convolution's HLO form: dim_labels, window
    path: str  # "YNNPACK", "Eigen", "naive" for convolutions


def _computations(text: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%(\S+) ", line)
        if head and line.rstrip().endswith("{"):
            current = "ENTRY" if head.group(1) else head.group(2)
            comps[current] = []
        elif current is not None and line.strip() not in ("", "}"):
            comps[current].append(line.strip())
    return comps


_CANONICAL = "b01f_01io->b01f"


def _conv_info(line: str) -> tuple[str, str, str]:
    """(direction, layer, form) of one HLO ``convolution`` instruction."""
    op_name = re.search(r'op_name="([^"]*)"', line)
    name = op_name.group(1) if op_name else ""
    direction = "input-gradient conv" if "transpose(" in name else "forward conv"
    skip = ("while", "body", "closed_call")
    parts = [p for p in name.split("/") if p and "(" not in p and p not in skip and not p[:1].isupper()]
    layer = "/".join(parts[:-1]) if parts and parts[-1] == "conv_general_dilated" else "/".join(parts)
    labels = re.search(r"dim_labels=(\S+?),", line)
    window = re.search(r"window=\{([^}]*)\}", line)
    form = f"{labels.group(1) if labels else '?'} {window.group(1) if window else ''}".strip()
    return direction, layer, form


def operations(text: str) -> list[Op]:
    """Every top-level operation of the entry computation and of while bodies."""
    comps = _computations(text)
    bodies = {m for line in comps.get("ENTRY", []) for m in re.findall(r"body=%([\w.\-]+)", line)}
    ops = []
    for comp in ["ENTRY", *sorted(bodies)]:
        where = "entry" if comp == "ENTRY" else "loop"
        for line in comps.get(comp, []):
            if " = " not in line or line.startswith("ROOT %tuple") or "parameter(" in line:
                continue
            name = line.split(" = ")[0].replace("ROOT ", "").lstrip("%")
            called = re.search(r"calls=%([\w.\-]+)", line)
            inner = comps.get(called.group(1), []) if called else []
            convs = [c for c in ([line] if " convolution(" in line else inner) if " convolution(" in c]
            if convs:
                direction, layer, form = _conv_info(convs[0])
                if name.startswith("ynn_fusion"):
                    path = "YNNPACK"
                elif " convolution(" in line and _CANONICAL in line:
                    path = "Eigen"
                else:
                    path = "naive"
                ops.append(Op(name, where, direction, layer, form, path))
                continue
            op_name = re.search(r'op_name="([^"]*)"', line)
            tail = op_name.group(1).rsplit("/", 1)[-1] if op_name else ""
            shape = re.search(r"= f32\[(\d+),(\d+),(\d+),(\d+)\]", line)
            kernel_like = shape is not None and int(shape.group(1)) <= 7 and int(shape.group(2)) <= 7
            kind = (
                "kernel preparation"
                if kernel_like and tail in ("rev", "transpose", "slice", "copy")
                else "other"
            )
            if (
                kind == "other"
                and kernel_like
                and any(k in name for k in ("transpose", "reverse", "copy", "slice"))
            ):
                kind = "kernel preparation"
            ops.append(Op(name, where, kind, "", "", ""))
    return ops


def profile(run: Callable[[], Any], names: set[str], rounds: int) -> tuple[dict[str, float], float]:
    """Per-operation time (seconds, minimum over ``rounds`` of the sum of its events in
    one run) and the minimum wall time of ``run``."""
    jax.block_until_ready(run())
    best: dict[str, float] = {}
    walls = []
    for _ in range(rounds):
        directory = tempfile.mkdtemp(prefix="jaxadv-prof-")
        try:
            with jax.profiler.trace(directory):
                start = time.perf_counter()
                jax.block_until_ready(run())
                walls.append(time.perf_counter() - start)
            path = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)[0]
            data = jax.profiler.ProfileData.from_file(path)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        sums: collections.Counter[str] = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in names:
                        sums[event.name] += event.duration_ns * 1e-9
        for name in names:
            best[name] = min(best.get(name, np.inf), sums.get(name, 0.0))
    return best, min(walls)


class Program(NamedTuple):
    label: str
    run: Callable[[], Any]
    text: str
    steps: int  # loop trip count (1 for a single gradient)


def programs(arch: str, batch: int) -> list[Program]:
    module = zoo.build(arch)
    x = jnp.asarray(np.random.default_rng(0).uniform(0.0, 1.0, (batch, 32, 32, 3)).astype(np.float32))
    variables = module.init(jax.random.key(0), x[:1])
    f = jaxadv.from_flax(module, variables)
    y = jnp.asarray(np.asarray(jaxadv.predict(f, x)))
    onehot = jax.nn.one_hot(y, 10)

    def gradient(f: Any, x: jax.Array) -> jax.Array:
        return jax.grad(lambda v: jnp.sum(jaxadv.cross_entropy(f(v), onehot)))(x)

    def pgd_program() -> Callable[..., jax.Array]:
        # A new function each time: jax.jit caches traces per function, and the
        # rewrite's setting is read at trace time.
        def pgd(f: Any, x: jax.Array, y: jax.Array) -> jax.Array:
            return jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=8 / 255, step_size=2 / 255, steps=10)

        return pgd

    out = []
    for label, fn, args, steps in (
        ("gradient", gradient, (f, x), 1),
        ("gradient, rewritten", conv_rewrite.rewrite(gradient), (f, x), 1),
    ):
        compiled = jax.jit(fn).lower(*args).compile()
        out.append(Program(label, lambda c=compiled, a=args: c(*a), compiled.as_text(), steps))
    variants = (
        ("PGD-10, rewrite off", False, False, False),
        ("PGD-10, layout only", True, False, False),
        ("PGD-10, + phase split", True, True, False),
        ("PGD-10, + kernels hoisted", True, True, True),
    )
    saved = conv_rewrite.POLYPHASE, conv_rewrite.HOIST
    try:
        for label, on, polyphase, hoist in variants:
            conv_rewrite.POLYPHASE, conv_rewrite.HOIST = polyphase, hoist
            conv_rewrite._plans.clear()
            with config.override(conv_rewrite=on):
                compiled = jax.jit(pgd_program()).lower(f, x, y).compile()
            out.append(Program(label, lambda c=compiled: c(f, x, y), compiled.as_text(), 10))
    finally:
        conv_rewrite.POLYPHASE, conv_rewrite.HOIST = saved
        conv_rewrite._plans.clear()
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f}"


def report(arch: str, batch: int, rounds: int, dump: str | None) -> None:
    print(f"\n{arch}, batch {batch} of 32x32x3 (ms; loop operations per step)")
    progs = programs(arch, batch)
    results = []
    for p in progs:
        ops = operations(p.text)
        times, wall = profile(p.run, {o.name for o in ops}, rounds)
        results.append((p, ops, times, wall))
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            (Path(dump) / f"{arch}.{p.label.replace(' ', '_').replace(',', '')}.txt").write_text(p.text)

    def per_call(p: Program, op: Op, times: dict[str, float]) -> float:
        return times.get(op.name, 0.0) / (p.steps if op.computation == "loop" else 1)

    for p, ops, times, _ in (results[0], results[-1]):
        print(f"\n  {p.label}: every convolution")
        print(f"  {'layer':24s} {'direction':20s} {'where':6s} {'path':8s} {'ms':>8s}  HLO form")
        convs = [o for o in ops if o.kind.endswith("conv") and (p.steps == 1 or o.computation == "loop")]
        for o in sorted(convs, key=lambda o: (o.kind, o.layer)):
            print(
                f"  {o.layer[:24]:24s} {o.kind:20s} {o.computation:6s} {o.path:8s} "
                f"{_ms(per_call(p, o, times))}  {o.form[:70]}"
            )
    print(
        f"\n  {'program':28s} {'fwd conv':>9s} {'grad YNN':>9s} {'Eigen':>9s} {'naive':>9s} "
        f"{'kernels':>9s} {'kern/call':>9s} {'other':>9s} {'sum':>9s} {'wall/step':>9s}"
    )
    for p, ops, times, wall in results:

        def total(
            pred: Callable[[Op], bool],
            where: str = "",
            p: Program = p,
            ops: list[Op] = ops,
            times: dict[str, float] = times,
        ) -> float:
            return sum(
                per_call(p, o, times) for o in ops if pred(o) and (not where or o.computation == where)
            )

        loop = "loop" if p.steps > 1 else ""
        fwd = total(lambda o: o.kind == "forward conv", loop)
        ynn = total(lambda o: o.kind == "input-gradient conv" and o.path == "YNNPACK", loop)
        eigen = total(lambda o: o.kind == "input-gradient conv" and o.path == "Eigen", loop)
        naive = total(lambda o: o.kind == "input-gradient conv" and o.path == "naive", loop)
        kernels = total(lambda o: o.kind == "kernel preparation", loop)
        once = total(lambda o: o.kind == "kernel preparation", "entry") if p.steps > 1 else 0.0
        other = total(lambda o: o.kind == "other", loop)
        print(
            f"  {p.label:28s} {_ms(fwd)} {_ms(ynn)} {_ms(eigen)} {_ms(naive)} {_ms(kernels)} {_ms(once)}"
            f" {_ms(other)} {_ms(fwd + ynn + eigen + naive + kernels + other)} {_ms(wall / p.steps)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="preact-resnet-18,wrn-28-10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dump", default=None, help="directory for the optimised HLO of every program")
    args = parser.parse_args()
    print(describe())
    for arch in args.models.split(","):
        report(arch.strip(), args.batch, args.rounds, args.dump)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
