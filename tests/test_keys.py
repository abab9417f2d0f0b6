"""Per-example keys (:mod:`jaxadv.keys`): what each helper draws, and that an attack's
result on an example depends on its key alone, never on the batch it is in.

The helpers are checked against the single-key JAX operation they stand for
(``fold_in``, ``split``, a draw). The attacks are checked by their defining
property: with the keys of :func:`jaxadv.example_keys` (each example's key by
its index), a batch and any split of it into sub-batches give the same rows,
bit for bit, on the registry's model (``tests/attack_registry.py``).
"""

from __future__ import annotations

from typing import Any

import attack_registry as reg
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv import keys as jk
from jaxadv.validation import check_key

KEY = jax.random.key(7)


def _data(k: Any) -> np.ndarray:
    return np.asarray(jax.random.key_data(k))


# --- the helpers -------------------------------------------------------------------------


def test_row_keys_of_one_key_fold_in_the_row_index() -> None:
    rows = jk.row_keys(KEY, 5)
    assert rows.shape == (5,)
    for i in range(5):
        np.testing.assert_array_equal(_data(rows[i]), _data(jax.random.fold_in(KEY, i)))
    # The same keys as example_keys of the indices 0 .. batch - 1.
    np.testing.assert_array_equal(_data(rows), _data(jk.example_keys(KEY, np.arange(5))))


def test_row_keys_use_a_batch_of_keys_as_it_is() -> None:
    given = jax.random.split(KEY, 4)
    np.testing.assert_array_equal(_data(jk.row_keys(given, 4)), _data(given))
    # Raw uint32 keys (jax.random.PRNGKey), one or a batch, are wrapped.
    raw = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(_data(jk.row_keys(raw, 3)), _data(jk.row_keys(jax.random.key(3), 3)))
    raw_batch = jax.random.key_data(given)
    assert raw_batch.dtype == jnp.uint32 and raw_batch.shape == (4, 2)
    np.testing.assert_array_equal(_data(jk.row_keys(raw_batch, 4)), _data(given))


@pytest.mark.parametrize("length", [3, 5])
def test_row_keys_refuse_a_batch_of_the_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match=r"key must be one PRNG key or a \[batch\] array.*batch=4"):
        jk.row_keys(jax.random.split(KEY, length), 4)
    with pytest.raises(ValueError, match="key must be"):
        jk.row_keys(jax.random.split(KEY, 8).reshape(2, 4), 4)  # [2, 4] keys: not a batch


@pytest.mark.parametrize("bad", [None, 0, 1.5, np.zeros(2, np.int32), np.zeros((), np.uint32)])
def test_non_keys_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="seed"):
        jk.row_keys(bad, 3, name="seed")
    with pytest.raises(ValueError, match="key"):
        jk.example_keys(bad, np.arange(3))


def test_example_keys_fold_each_index() -> None:
    idx = np.array([9, 0, 41, 9])
    ks = jk.example_keys(KEY, idx)
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(_data(ks[j]), _data(jax.random.fold_in(KEY, int(i))))
    np.testing.assert_array_equal(_data(ks[0]), _data(ks[3]))  # same index, same key
    with pytest.raises(ValueError, match="indices must be a \\[n\\] integer array"):
        jk.example_keys(KEY, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="indices"):
        jk.example_keys(KEY, np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="one PRNG key"):
        jk.example_keys(jax.random.split(KEY, 2), np.arange(2))


def test_fold_split_and_draw_rows_are_the_single_key_operations_row_by_row() -> None:
    ks = jk.example_keys(KEY, np.array([3, 1, 4, 1, 5]))
    folded = jk.fold_rows(ks, 11)
    parts = jk.split_rows(ks, 3)
    assert len(parts) == 3 and all(p.shape == (5,) for p in parts)
    drawn = jk.draw_rows(lambda k: jax.random.normal(k, (2, 3)), ks)
    assert drawn.shape == (5, 2, 3)
    for i in range(5):
        np.testing.assert_array_equal(_data(folded[i]), _data(jax.random.fold_in(ks[i], 11)))
        split = jax.random.split(ks[i], 3)
        for j in range(3):
            np.testing.assert_array_equal(_data(parts[j][i]), _data(split[j]))
        np.testing.assert_array_equal(np.asarray(drawn[i]), np.asarray(jax.random.normal(ks[i], (2, 3))))
    # Independent: the three parts and the fold differ.
    assert len({_data(k).tobytes() for k in (parts[0][0], parts[1][0], parts[2][0], folded[0])}) == 4


def test_per_row_calls_the_function_one_example_at_a_time() -> None:
    def noisy(x: Any, k: Any) -> Any:  # a "randomised model": its noise has the batch's shape
        return x + jax.random.normal(k, x.shape)

    x = jnp.arange(12.0).reshape(4, 3)
    ks = jk.row_keys(KEY, 4)
    out = jk.per_row(noisy)(x, ks)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(out[i]), np.asarray(noisy(x[i : i + 1], ks[i])[0]))
    # Row 2 alone, with its key, gives the same numbers as inside the batch.
    np.testing.assert_array_equal(np.asarray(jk.per_row(noisy)(x[2:3], ks[2:3])[0]), np.asarray(out[2]))


def test_check_key_accepts_a_batch_of_keys_only_per_example() -> None:
    batch = jax.random.split(KEY, 4)
    raw = jax.random.key_data(batch)
    for k in (batch, raw):
        assert check_key(k, per_example=True) is k
        with pytest.raises(ValueError, match="key must be one PRNG key, e.g."):
            check_key(k)
    for k in (KEY, jax.random.PRNGKey(0)):  # one key passes both ways
        assert check_key(k) is k and check_key(k, per_example=True) is k
    for bad in (None, 0, np.zeros((4, 3), np.uint32), jax.random.split(KEY, 4).reshape(2, 2)):
        with pytest.raises(ValueError, match=r"one PRNG key or a \[batch\] array of keys"):
            check_key(bad, per_example=True)


# --- the attacks: sub-batches give the same rows --------------------------------------------

#: Keyed attacks whose random draws take different paths: a random start (pgd), restarts
#: and a random start (apgd), Square's windows and signs, FAB's random restarts, a
#: decision-based search (hop_skip_jump: noise and directions), finite differences (spsa),
#: and a composed attack with EOT gradients and a random start. The last ones compile
#: for over 10 s each on two CPU cores: slow tier.
_SLOW = pytest.mark.slow
KEYED = {
    "pgd": ({}, ()),
    "square": ({}, ()),
    "compose.Attack": ({}, ()),
    "apgd": ({"num_restarts": 2}, _SLOW),
    "fab": ({"num_restarts": 2}, _SLOW),
    "hop_skip_jump": ({}, _SLOW),
    "spsa": ({}, _SLOW),
}
ROWS = 4  # the batch: two shapes to compile (4 rows, and halves of 2)


def _rows(out: Any) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]


@pytest.fixture(scope="module")
def model() -> tuple[Any, jax.Array, jax.Array]:
    fn = jaxadv.from_apply(reg.apply, reg.make_params())
    x = reg.make_batch()[:ROWS]
    return fn, x, jaxadv.predict(fn, x)


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks) for name, (_, marks) in KEYED.items()])
def test_an_attack_gives_each_example_the_same_result_in_any_batch(name: str, model: Any) -> None:
    """The whole batch, its two halves, and the batch in another order (each row with
    its own key) give the same rows, every output leaf bit for bit."""
    fn, x, y = model
    spec = reg.BY_NAME[name]
    over = KEYED[name][0]
    ks = jk.example_keys(KEY, np.arange(10, 10 + ROWS))  # the examples' indices in some dataset

    def run(rows: Any) -> list[np.ndarray]:
        return _rows(reg.call(spec, fn, x[rows], y[rows], key=ks[rows], info=True, **over))

    whole = run(np.arange(ROWS))
    assert whole[0].shape[0] == ROWS
    halves = [run(np.arange(0, 2)), run(np.arange(2, 4))]
    order = np.array([2, 0, 3, 1])
    shuffled = run(order)
    for leaf, (w, a, b, s) in enumerate(zip(whole, *halves, shuffled, strict=True)):
        np.testing.assert_array_equal(np.concatenate([a, b]), w, err_msg=f"{name}, leaf {leaf}: halves")
        np.testing.assert_array_equal(s, w[order], err_msg=f"{name}, leaf {leaf}: another order")


@pytest.mark.parametrize("name", ["pgd", "square"])
def test_one_key_means_the_keys_of_the_row_indices(name: str, model: Any) -> None:
    fn, x, y = model
    spec = reg.BY_NAME[name]
    one = _rows(reg.call(spec, fn, x, y, key=KEY, info=True))
    many = _rows(reg.call(spec, fn, x, y, key=jk.example_keys(KEY, np.arange(ROWS)), info=True))
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)
    # Other keys for the same examples: other draws (the keys are used at all).
    first = reg.x_adv(reg.call(spec, fn, x, y, key=KEY))
    other = reg.x_adv(reg.call(spec, fn, x, y, key=jk.example_keys(KEY, np.arange(1, ROWS + 1))))
    assert not np.array_equal(np.asarray(other), np.asarray(first))


@pytest.mark.parametrize("name", ["pgd", "square", "compose.Attack"])
def test_attacks_refuse_a_batch_of_keys_of_the_wrong_length(name: str, model: Any) -> None:
    fn, x, y = model
    with pytest.raises(ValueError, match="key"):
        reg.call(reg.BY_NAME[name], fn, x, y, key=jk.example_keys(KEY, np.arange(ROWS + 1)))
