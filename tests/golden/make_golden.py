"""Write ``tests/golden/attacks.npz``: today's outputs of every case in ``tests/golden_models.py``.

Run from the repository root, only when an attack's results are meant to change:

.. code-block:: console

    python tests/golden/make_golden.py

``tests/test_golden.py`` reruns the same cases and compares with the stored arrays.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import golden_models as gm  # noqa: E402
from test_golden import EXTRA_KWARGS  # noqa: E402  (the same calls as the test)

# As in tests/conftest.py, so that the pins are made under the test suite's settings.
jax.config.update("jax_numpy_rank_promotion", "allow")

OUTPUT = HERE / "attacks.npz"


def main() -> None:
    setup = gm.build()
    arrays: dict[str, np.ndarray] = {}
    for name, case in gm.CASES.items():
        arrays.update(gm.flatten(name, case(setup, EXTRA_KWARGS.get(name, {}))))
    np.savez(OUTPUT, **arrays)
    for name, value in arrays.items():
        print(f"{name:28s} {str(value.dtype):8s} {value.shape}")
    print(f"wrote {len(arrays)} arrays to {OUTPUT}")


if __name__ == "__main__":
    main()
