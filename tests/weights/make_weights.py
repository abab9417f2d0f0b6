"""Write ``tests/weights/digits.npz``: the trained digits models that the tests use.

The tests attack trained classifiers (``cnn``, ``cnn_b`` and ``mlp`` in
``tests/conftest.py``, and a small normalised MLP in ``tests/test_certify_bounds.py``).
Training them in every test process cost seconds of compilation each; they are
trained once here, with :func:`jaxadv.examples.train_classifier` on the bundled
digits set, and stored as float32 arrays. Run from the repository root when a model
is meant to change (another architecture, seed or number of epochs):

.. code-block:: console

    python tests/weights/make_weights.py

The file holds one entry per leaf of each model's variables, named
``<model>/<path>`` (for instance ``cnn/params/Conv_0/kernel``);
:func:`small_models.trained_digits` reads them back into the module's variables.
"""

from __future__ import annotations

import pathlib
import sys

import flax.traverse_util
import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import small_models as sm  # noqa: E402

from jaxadv import examples  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "allow")

OUTPUT = HERE / "digits.npz"


def main() -> None:
    train, test = examples.load_digits(0)
    arrays: dict[str, np.ndarray] = {}
    for name, recipe in sm.DIGITS_MODELS.items():
        variables = sm.train(recipe, train)
        flat = flax.traverse_util.flatten_dict(variables, sep="/")
        for path, leaf in flat.items():
            arrays[f"{name}/{path}"] = np.asarray(leaf, np.float32)
        accuracy = examples.accuracy(sm.trained_from(recipe, variables).logits_fn, test.x, test.y)
        size = sum(v.size for k, v in arrays.items() if k.startswith(name + "/"))
        print(f"{name:8s} {size:7d} parameters, test accuracy {accuracy:.3f}")
    np.savez_compressed(OUTPUT, **arrays)
    print(f"wrote {len(arrays)} arrays to {OUTPUT} ({OUTPUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
