"""``jaxadv evaluate``: a model saved with Orbax, evaluated from the command line,
gives the same numbers as the library call."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxadv
from jaxadv.__main__ import main


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
        "--checkpoint", str(ckpt),
        "--data", str(tmp_path / "data.npz"),
        "--eps", "0.1",
        "--suite", "fgsm,pgd-20",
        "--out", str(out),
        "--batch-size", "32",
        "--seed", "3",
        "--no-progress",
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


def test_cli_rejects_a_bad_factory(tmp_path: Any) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--model",
                "nomodule",
                "--checkpoint",
                str(tmp_path),
                "--data",
                "x.npz",
                "--eps",
                "0.1",
            ]
        )
