"""The demo (``python -m jaxadv``) trains the digits CNN and tabulates attacks."""

from __future__ import annotations

from jaxadv import demo


def test_demo_table_is_consistent() -> None:
    lines: list[str] = []
    table = demo.run((0.1, 0.3), steps=5, print_fn=lines.append)
    clean = table["clean"][0]
    assert clean > 0.95
    fgsm, bim = table["FGSM"], table["BIM-5"]
    # Attacks hurt, more with larger eps, and the iterative attack is no weaker.
    assert fgsm[0] < clean and fgsm[1] <= fgsm[0]
    assert all(b <= f + 0.01 for b, f in zip(bim, fgsm, strict=True))
    assert bim[1] < 0.1
    assert any("accuracy (L-inf)" in line for line in lines)
