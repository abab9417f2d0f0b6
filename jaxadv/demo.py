"""The demo: attack a small CNN trained on the bundled digits set.

``python -m jaxadv`` (or ``jaxadv demo``) trains the CNN (a few seconds on a
CPU), then prints its accuracy on the 397 held-out digits under each attack
family at a few eps values (L-inf, pixels in ``[0, 1]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Callable

import jax

import jaxadv
from jaxadv import examples


def run(
    eps_values: Sequence[float] = (0.05, 0.1, 0.2),
    *,
    steps: int = 20,
    seed: int = 0,
    print_fn: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Train the digits CNN and tabulate accuracy under attack.

    Returns:
      ``{attack name: [accuracy at each eps]}``, ``"clean"`` included.
    """
    train, test = examples.load_digits(seed)
    model = examples.DigitsCNN()
    print_fn(f"training {type(model).__name__} on {len(train.y)} digits ...")
    t0 = time.perf_counter()
    variables = examples.train_classifier(model, train, seed=seed)
    logits_fn = jaxadv.from_flax(model, variables)
    print_fn(f"  done in {time.perf_counter() - t0:.1f}s")

    key = jax.random.key(seed)
    target = jaxadv.least_likely(logits_fn, test.x)
    attacks: dict[str, Callable[[float], jax.Array]] = {
        "FGSM": lambda e: jaxadv.fgsm(logits_fn, test.x, test.y, eps=e),
        f"BIM-{steps}": lambda e: jaxadv.bim(logits_fn, test.x, test.y, eps=e, steps=steps),
        f"PGD-{steps}": lambda e: jaxadv.pgd(logits_fn, test.x, test.y, key=key, eps=e, steps=steps),
        f"PGD-{steps} (CW loss)": lambda e: jaxadv.pgd(
            logits_fn, test.x, test.y, key=key, eps=e, steps=steps, loss=jaxadv.cw_margin
        ),
    }
    clean = examples.accuracy(logits_fn, test.x, test.y)
    table: dict[str, list[float]] = {"clean": [clean] * len(eps_values)}
    for name, attack in attacks.items():
        print_fn(f"attacking with {name} ...")
        table[name] = [examples.accuracy(logits_fn, attack(e), test.y) for e in eps_values]

    ll_hits = []
    for e in eps_values:
        x_adv = jaxadv.bim(logits_fn, test.x, target, eps=e, steps=steps, targeted=True)
        ll_hits.append(float((jaxadv.predict(logits_fn, x_adv) == target).mean()))

    width = max(len(n) for n in table) + 2
    header = "accuracy (L-inf)".ljust(width) + "".join(f"eps={e:<8g}" for e in eps_values)
    print_fn("")
    print_fn(header)
    print_fn("-" * len(header))
    for name, row in table.items():
        print_fn(name.ljust(width) + "".join(f"{a:<12.3f}" for a in row))
    print_fn("")
    print_fn(
        "iterative least-likely class: target reached for "
        + ", ".join(f"{h:.1%} at eps={e:g}" for h, e in zip(ll_hits, eps_values, strict=True))
    )
    return table
