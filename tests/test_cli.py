"""``jaxadv evaluate``: a model saved with Orbax, evaluated from the command line,
gives the same numbers as the library call; bad arguments and inputs get one
line on stderr and exit status 2; an interrupted run resumes.

The installed console script itself is run in ``test_cli_console.py``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxadv
from jaxadv import cli
from jaxadv.__main__ import build_parser, main


@pytest.mark.slow
@pytest.mark.full_optimization
def test_cli_report_matches_library(cnn: Any, digits: Any, tmp_path: Any) -> None:
    test = digits[1]
    x, y = test.x[:64], test.y[:64]
    ckpt = (tmp_path / "ckpt").resolve()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ckpt, cnn.variables)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    out = tmp_path / "out"
    argv = [
        "evaluate",
        "--model", "jaxadv.examples:DigitsCNN",
        "--weights", str(ckpt),
        "--data", str(tmp_path / "data.npz"),
        "--eps", "0.1",
        "--suite", "fgsm,pgd-20",
        "--out", str(out),
        "--batch-size", "32",
        "--seed", "3",
        "--no-progress",
        "--no-checks",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    expected = jaxadv.evaluate(
        cnn.logits_fn,
        x,
        y,
        eps=0.1,
        suite=["fgsm", "pgd-20"],
        key=jax.random.key(3),
        batch_size=32,
        progress=False,
    )
    assert report["robust_accuracy"] == pytest.approx(expected.robust_accuracy)
    assert report["clean_accuracy"] == pytest.approx(expected.clean_accuracy)
    assert report["fooled_by"] == expected.fooled_by.tolist()
    assert report["attacks"] == ["fgsm", "pgd-20"]
    for name in ("summary.txt", "accuracy_vs_eps.png", "examples.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "partial.json").exists()


# --- a tiny saved model, shared by the tests below ---------------------------------

MODULE = "cli_tiny_models"
MODEL_SOURCE = textwrap.dedent(
    """
    import flax.linen as nn
    import jax.numpy as jnp

    import jaxadv


    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))


    def make_model():
        return Tiny()


    def _quantise(x):
        return jnp.round(x * 2) / 2


    class Quantised(nn.Module):
        # Tiny behind input quantisation (the same variables); with bpda, its BPDA surrogate.

        bpda: bool = False

        @nn.compact
        def __call__(self, x):
            q = jaxadv.bpda(_quantise)(x) if self.bpda else _quantise(x)
            return nn.Dense(3)(q.reshape(q.shape[0], -1))


    def make_quantised():
        return Quantised()


    def make_surrogate():
        return Quantised(bpda=True)


    def broken():
        raise RuntimeError("no weights for this size")


    def not_a_model():
        return 42


    NOT_CALLABLE = 1
    """
)


class Saved(NamedTuple):
    app_dir: Path
    checkpoint: Path
    data: Path
    x: np.ndarray
    y: np.ndarray
    variables: Any


def _tiny_model() -> nn.Module:
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    return Tiny()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: Any) -> Saved:
    """A model module, its Orbax checkpoint and 16 examples labelled with its predictions."""
    root = tmp_path_factory.mktemp("cli")
    (root / f"{MODULE}.py").write_text(MODEL_SOURCE)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(16, 4, 4, 3)).astype(np.float32)
    model = _tiny_model()
    variables = model.init(jax.random.key(0), x[:1])
    y = np.asarray(model.apply(variables, x).argmax(-1), np.int32)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((root / "ckpt").resolve(), variables)
    np.savez(root / "data.npz", x=x, y=y)
    return Saved(root, root / "ckpt", root / "data.npz", x, y, variables)


@pytest.fixture
def clean_imports(monkeypatch: Any) -> None:
    """Undo the CLI's change of sys.path and forget the imported model module."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)


def _argv(saved: Saved, out: Path, **options: Any) -> list[str]:
    """``evaluate`` arguments for the saved model; ``options`` replace or add flags (None drops one)."""
    flags: dict[str, Any] = {
        "--model": f"{MODULE}:make_model",
        "--app-dir": str(saved.app_dir),
        "--weights": str(saved.checkpoint),
        "--data": str(saved.data),
        "--eps": "0.05",
        "--suite": "fgsm",
        "--out": str(out),
        "--batch-size": "8",
        "--no-progress": True,
        "--no-checks": True,
    }
    flags.update({("--" + k.replace("_", "-")): v for k, v in options.items()})
    argv = ["evaluate"]
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        argv.append(flag)
        if value is not True:
            argv.extend(value if isinstance(value, list) else [str(value)])
    return argv


def _user_error(capsys: Any, argv: list[str]) -> str:
    """Run ``main(argv)``; it must exit 2 with a single ``error:`` line and no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxadv evaluate: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _npz(tmp_path: Path, **arrays: Any) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


# Each case: extra options (a callable gets tmp_path and the fixture, for data
# files) and a fragment of the expected message.
BAD_INPUTS: list[tuple[str, Callable[[Path, Saved], dict[str, Any]], str]] = [
    ("spec", lambda t, s: {"model": "cli_tiny_models"}, "must look like 'module:function'"),
    ("module", lambda t, s: {"model": "no_such_module_here:f"}, "No module named 'no_such_module_here'"),
    ("attribute", lambda t, s: {"model": f"{MODULE}:missing"}, "has no attribute 'missing'"),
    ("not callable", lambda t, s: {"model": f"{MODULE}:NOT_CALLABLE"}, "is not callable"),
    ("factory raises", lambda t, s: {"model": f"{MODULE}:broken"}, "raised RuntimeError: no weights"),
    ("not a module", lambda t, s: {"model": f"{MODULE}:not_a_model"}, "must return a flax.linen.Module"),
    ("app dir", lambda t, s: {"app_dir": str(t / "nowhere")}, "is not a directory"),
    ("data file", lambda t, s: {"data": str(t / "none.npz")}, "does not exist"),
    ("not npz", lambda t, s: {"data": str(s.checkpoint / "_METADATA")}, "cannot read --data"),
    ("arrays", lambda t, s: {"data": _npz(t, x=s.x)}, "must hold arrays 'x' and 'y'"),
    ("x shape", lambda t, s: {"data": _npz(t, x=s.x[:, 0, 0, 0], y=s.y)}, "x must have shape [n, ...]"),
    ("lengths", lambda t, s: {"data": _npz(t, x=s.x, y=s.y[:5])}, "16 examples but y holds 5"),
    ("x nan", lambda t, s: {"data": _npz(t, x=np.where(s.x > 0.5, np.nan, s.x), y=s.y)}, "NaN or infinite"),
    ("x int", lambda t, s: {"data": _npz(t, x=(s.x * 255).astype(np.int64), y=s.y)}, "floating-point"),
    ("uint8", lambda t, s: {"data": _npz(t, x=(s.x * 255).astype(np.uint8), y=s.y)}, "pass --uint8-scale"),
    ("uint8 flag", lambda t, s: {"uint8_scale": True}, "--uint8-scale needs uint8 x"),
    ("uint8 bounds", lambda t, s: {"uint8_scale": True, "bounds": ["0", "255"]}, "contradicts"),
    ("float y", lambda t, s: {"data": _npz(t, x=s.x, y=s.y + 0.5)}, "is not an integer"),
    ("soft y", lambda t, s: {"data": _npz(t, x=s.x, y=np.full((16, 3), 1 / 3))}, "soft labels"),
    ("str y", lambda t, s: {"data": _npz(t, x=s.x, y=s.y.astype(str))}, "integer labels"),
    ("negative y", lambda t, s: {"data": _npz(t, x=s.x, y=s.y - 1)}, "class indices >= 0"),
    ("y >= classes", lambda t, s: {"data": _npz(t, x=s.x, y=s.y + 3)}, "the model has 3 classes"),
    ("x outside bounds", lambda t, s: {"data": _npz(t, x=s.x + 2.0, y=s.y)}, "bounds"),
    ("model mismatch", lambda t, s: {"data": _npz(t, x=s.x[:, :2], y=s.y)}, "the model cannot run on x[:1]"),
    ("weights", lambda t, s: {"weights": str(t / "no_ckpt")}, "is not a directory"),
    ("not a checkpoint", lambda t, s: {"weights": str(s.app_dir)}, "cannot restore an Orbax checkpoint"),
    ("std 0", lambda t, s: {"std": ["0"]}, "--std must hold finite values > 0"),
    ("std < 0", lambda t, s: {"std": ["0.2", "-0.2", "0.2"]}, "--std must hold finite values > 0"),
    ("std length", lambda t, s: {"std": ["0.2", "0.2"]}, "--std has 2 values; give 1, or 3"),
    ("mean length", lambda t, s: {"mean": ["0.5"] * 4}, "--mean has 4 values; give 1, or 3"),
    ("mean nan", lambda t, s: {"mean": ["nan"]}, "--mean must hold finite values"),
    ("eps inf", lambda t, s: {"eps": "inf"}, "--eps must be a finite number >= 0"),
    ("eps nan", lambda t, s: {"eps": "nan"}, "--eps must be a finite number >= 0"),
    ("eps < 0", lambda t, s: {"eps": "-0.1"}, "--eps must be a finite number >= 0"),
    ("bounds", lambda t, s: {"bounds": ["1", "0"]}, "LO < HI"),
    ("batch size", lambda t, s: {"batch_size": "0"}, "--batch-size must be >= 1"),
    ("suite", lambda t, s: {"suite": "fgsm,no-such-attack"}, "no-such-attack"),
]


@pytest.mark.parametrize(("case", "options", "match"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_cli_user_errors_are_one_line_and_exit_2(
    case: str, options: Any, match: str, saved: Saved, tmp_path: Path, capsys: Any, clean_imports: None
) -> None:
    out = tmp_path / "out"
    line = _user_error(capsys, _argv(saved, out, **options(tmp_path, saved)))
    assert match in line
    assert not (out / "report.json").exists()


def test_cli_internal_errors_keep_their_traceback(
    saved: Saved, tmp_path: Path, monkeypatch: Any, clean_imports: None
) -> None:
    def broken_evaluate(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("an attack left the eps-ball")

    monkeypatch.setattr(jaxadv, "evaluate", broken_evaluate)
    with pytest.raises(RuntimeError, match="left the eps-ball"):
        main(_argv(saved, tmp_path / "out"))


class Killed(Exception):
    """Stands for the process being killed after the first batch."""


@pytest.mark.slow
def test_cli_resumes_an_interrupted_run_and_never_clobbers_results(
    saved: Saved, tmp_path: Path, capsys: Any, clean_imports: None
) -> None:
    logits_fn = jaxadv.from_flax(_tiny_model(), cli.restore_variables(saved.checkpoint))
    settings: dict[str, Any] = dict(eps=0.05, suite=["fgsm"], batch_size=8, progress=False)
    expected = jaxadv.evaluate(logits_fn, saved.x, saved.y, key=jax.random.key(5), **settings)

    # An interrupted run: the first batch of 8 is in partial.json, as the CLI writes it.
    out = tmp_path / "out"
    out.mkdir()

    def batches() -> Any:
        yield saved.x[:8], saved.y[:8]
        raise Killed

    partial = out / "partial.json"
    with pytest.raises(Killed):
        jaxadv.evaluate(logits_fn, batches(), key=jax.random.key(5), checkpoint=partial, **settings)
    before = partial.read_bytes()

    line = _user_error(capsys, _argv(saved, out, seed=5))
    assert str(partial) in line and "--resume" in line
    # Another run's settings: evaluate refuses the checkpoint, the CLI says so in one line.
    _user_error(capsys, _argv(saved, out, seed=5, eps="0.1", resume=True))
    assert partial.read_bytes() == before

    assert main(_argv(saved, out, seed=5, resume=True)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["robust_accuracy"] == expected.robust_accuracy
    assert report["clean_accuracy"] == expected.clean_accuracy == 1.0
    assert report["fooled_by"] == expected.fooled_by.tolist()
    assert not partial.exists()

    # A finished report is not replaced without --overwrite.
    report_bytes = (out / "report.json").read_bytes()
    line = _user_error(capsys, _argv(saved, out, seed=5))
    assert str(out / "report.json") in line and "--overwrite" in line
    assert (out / "report.json").read_bytes() == report_bytes
    assert main(_argv(saved, out, seed=5, overwrite=True)) == 0
    assert json.loads((out / "report.json").read_text())["fooled_by"] == expected.fooled_by.tolist()


def test_cli_norm_accepts_autoattack_spelling() -> None:
    parser = build_parser()
    base = ["evaluate", "--model", "m:f", "--weights", "c", "--data", "d.npz", "--eps", "0.1"]
    for given, canonical in (("Linf", "linf"), ("L2", "l2"), ("L1", "l1"), ("LINF", "linf"), ("l2", "l2")):
        assert parser.parse_args([*base, "--norm", given]).norm == canonical
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*base, "--norm", "L3"])
    assert exc.value.code == 2


def test_load_data_labels_and_uint8(tmp_path: Path) -> None:
    raw = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    path = tmp_path / "d.npz"

    np.savez(path, x=raw, y=np.asarray([2.0, 0.0]))  # exactly integral floats are labels
    x, y = cli.load_data(path, uint8_scale=True)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, raw.astype(np.float32) / np.float32(255))
    assert y.dtype == np.int32 and y.tolist() == [2, 0]

    np.savez(path, x=raw / 255.0, y=np.asarray([[0, 0, 1], [1, 0, 0]]))  # one-hot rows: argmax
    x, y = cli.load_data(path)
    assert x.dtype == np.float32 and y.tolist() == [2, 0]

    np.savez(path, x=raw / 255.0, y=np.asarray([[1], [2]]))  # a column of labels
    assert cli.load_data(path)[1].tolist() == [1, 2]

    np.savez(path, x=raw / 255.0, y=np.asarray([[1, 1, 0], [1, 0, 0]]))  # two 1s in a row
    with pytest.raises(cli.CliError, match="one-hot"):
        cli.load_data(path)


@pytest.mark.slow
def test_cli_batch_size_auto_is_recorded(
    saved: Saved, tmp_path: Path, capsys: Any, clean_imports: None
) -> None:
    out = tmp_path / "out"
    assert main(_argv(saved, out, batch_size="auto")) == 0
    report = json.loads((out / "report.json").read_text())
    # Nothing runs out of memory here: the first try (all the examples) is kept.
    assert report["batch_size"] == len(saved.y)
    with pytest.raises(SystemExit) as exc:
        main(_argv(saved, tmp_path / "other", batch_size="many"))
    assert exc.value.code == 2 and "integer or 'auto'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_diagnose_reports_the_indicators(
    saved: Saved, tmp_path: Path, capsys: Any, clean_imports: None
) -> None:
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(_argv(saved, out, diagnose=True)) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    names = set(jaxadv.evaluation.diagnostics.NAMES[:5])
    assert set(report["indicators"]) == names and set(report["indicator_counts"]) == names
    for name, flags in report["indicators"].items():
        assert len(flags) == len(saved.y) and sum(flags) == report["indicator_counts"][name]
    assert "indicators of attack failure" in printed
    assert "indicators of attack failure" in (out / "summary.txt").read_text()
    assert main(_argv(saved, tmp_path / "plain")) == 0
    assert json.loads((tmp_path / "plain" / "report.json").read_text())["indicators"] is None


@pytest.mark.slow
def test_cli_adaptive_reports_both_figures(
    saved: Saved, tmp_path: Path, capsys: Any, clean_imports: None
) -> None:
    out = tmp_path / "out"
    assert main(_argv(saved, out, adaptive=True)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["adaptive"] is not None and report["indicators"] is not None
    assert report["adaptive_robust_accuracy"] <= report["robust_accuracy"]
    assert not (out / "partial.json").exists()
    assert "adaptive re-attack" in (out / "summary.txt").read_text()
    # Resumed from its complete partial file: the same report, nothing attacked again.
    again = tmp_path / "again"
    assert main(_argv(saved, again, adaptive=True, diagnose=True)) == 0
    assert json.loads((again / "report.json").read_text())["adaptive"] == report["adaptive"]


@pytest.mark.slow
def test_cli_adaptive_attacks_through_a_surrogate(
    saved: Saved, tmp_path: Path, capsys: Any, clean_imports: None
) -> None:
    """--surrogate: the quantised model's BPDA surrogate gets the BPDA fix, judged on the model."""
    out = tmp_path / "out"
    argv = _argv(
        saved, out, model=f"{MODULE}:make_quantised", surrogate=f"{MODULE}:make_surrogate", adaptive=True,
        eps="0.3",
    )  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    # Quantisation hides the gradient from FGSM; through the surrogate the BPDA fix fools them.
    assert report["adaptive"]["ran"]["bpda"] > 0 and report["adaptive"]["fooled_by_fix"]["bpda"] > 0
    assert report["adaptive_robust_accuracy"] < report["robust_accuracy"]


def test_cli_surrogate_needs_adaptive_and_a_model(
    saved: Saved, tmp_path: Path, capsys: Any, clean_imports: None
) -> None:
    line = _user_error(capsys, _argv(saved, tmp_path / "a", surrogate=f"{MODULE}:make_surrogate"))
    assert "--surrogate" in line and "--adaptive" in line
    line = _user_error(capsys, _argv(saved, tmp_path / "b", surrogate=f"{MODULE}:broken", adaptive=True))
    assert "no weights for this size" in line
