"""The private core of jaxadv: machinery the public modules build on.

Nothing here is public API; names and behaviour may change without notice.
The core belongs to the bottom layer of the package, with the foundation
modules (:mod:`jaxadv.typing`, :mod:`jaxadv.config`, :mod:`jaxadv.validation`,
:mod:`jaxadv.keys`, :mod:`jaxadv.losses`, :mod:`jaxadv.models`,
:mod:`jaxadv.threat_models`, :mod:`jaxadv.success`, :mod:`jaxadv.gradients`,
:mod:`jaxadv.targets`, :mod:`jaxadv.engine`). Those public modules keep their
own implementation (each is small and documented where it lives); the core
holds what every layer above them needs but no user calls: the problem of an
attack, the randomised-model plumbing, row selection, the jaxpr walker and the
convolution rewrite. Modules here import only from that bottom layer, never
from :mod:`jaxadv.compose`, :mod:`jaxadv.attacks` or anything above
(``tests/test_layers.py`` checks it), so that every public layer can import
them.

* :mod:`jaxadv._core.problem`: :func:`prepare` and :class:`Problem` (an
  attack's inputs checked and normalised), :func:`check_step_size`,
  :func:`check_finite_step`, :func:`output_shape`; re-exported by
  :mod:`jaxadv.attacks.base`.
* :mod:`jaxadv._core.randomised`: a randomised model ``logits_fn(x, key)``
  seen through fixed per-example keys (:func:`fix_key`,
  :func:`prepare_problem`) or called by a loop with its own keys
  (:func:`loop_problem`, :func:`source_model`).
* :mod:`jaxadv._core.rows`: the per-example helpers: :func:`per_example`
  (re-exported by :mod:`jaxadv.threat_models`), :func:`select_rows` (``new``
  in the examples where a mask holds, ``old`` elsewhere, over pytrees) and
  :func:`flat` (``[batch, ...] -> [batch, n]``).
* :mod:`jaxadv._core.search`: searches over one scalar per example: bisection
  (:func:`midpoint`, :func:`narrow`; FAB, FMN, HopSkipJump) and the bracketing
  search of CW's and EAD's constant (:func:`bracket`).
* :mod:`jaxadv._core.jaxpr`: walking a jaxpr equation by equation (entering
  calls, re-binding primitives), shared by the convolution rewrite and by the
  bound propagation of :mod:`jaxadv.certify`.
* :mod:`jaxadv._core.conv_rewrite`: on XLA:CPU, the convolutions of an
  attack's loop body written in the form the fast convolution path takes, with
  the kernels they need prepared once before the loop.
"""
