"""Backwards-compatible home of the score-based attacks: a re-export only.

The attacks live in :mod:`jaxadv.attacks.square` (:func:`square`),
:mod:`jaxadv.attacks.gradient_free` (:func:`spsa`, :func:`nes`) and the
plumbing they share with the decision-based attack in
:mod:`jaxadv.attacks.blackbox`; import from those (or from ``jaxadv``).
:data:`BlackBoxResult` is a deprecated alias of :class:`jaxadv.AttackResult`.
"""

from jaxadv.attacks.blackbox import BlackBoxResult
from jaxadv.attacks.gradient_free import nes, spsa
from jaxadv.attacks.square import square

__all__ = ["BlackBoxResult", "nes", "spsa", "square"]
