"""``jaxadv --help`` reads as plain text, every option says what it does, and the
model's weights are ``--weights`` (``checkpoint`` is evaluate's progress file)."""

from __future__ import annotations

import argparse

import pytest

from jaxadv.__main__ import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_has_no_restructuredtext_markup() -> None:
    parser = build_parser()
    texts = [parser.format_help(), *(p.format_help() for p in _subparsers(parser).values())]
    for text in texts:
        assert "``" not in text and ":func:" not in text and ":doc:" not in text, text


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_every_option_has_help_text(command: str) -> None:
    parser = _subparsers(build_parser())[command]
    missing = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert not missing


def test_the_weights_option_is_weights_not_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    base = ["evaluate", "--model", "m:f", "--data", "d.npz", "--eps", "0.1"]
    assert parser.parse_args([*base, "--weights", "ckpt"]).weights == "ckpt"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--checkpoint", "ckpt"])
    assert "--weights" in capsys.readouterr().err
