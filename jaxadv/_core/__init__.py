"""The private core of jaxadv: machinery the public modules build on.

Nothing here is public API; names and behaviour may change without notice.
Modules in this package import nothing from the rest of jaxadv except
:mod:`jaxadv.config` and :mod:`jaxadv.typing`, so that every public layer
(attacks, evaluation, training, certification) can import them.

* :mod:`jaxadv._core.jaxpr`: walking a jaxpr equation by equation (entering
  calls, re-binding primitives), shared by the convolution rewrite and by the
  bound propagation of :mod:`jaxadv.certify`.
* :mod:`jaxadv._core.conv_rewrite`: on XLA:CPU, the convolutions of an
  attack's loop body written in the form the fast convolution path takes, with
  the kernels they need prepared once before the loop.
"""
