"""Input preparation shared by every attack: checks, dtypes, labels, bounds.

:func:`prepare` turns the public arguments of an attack into a :class:`Problem`
of float32 arrays plus the model split into its static structure and traced
parameters; :meth:`Problem.finalize` casts the result back to the dtype of
``x``. New attacks start from here so that they all accept the same inputs and
reject bad ones with the same errors. (The implementation lives in the private
core, ``jaxadv._core.problem``, below every public layer.)
"""

from jaxadv._core.problem import Problem, check_finite_step, check_step_size, output_shape, prepare

__all__ = ["Problem", "check_finite_step", "check_step_size", "output_shape", "prepare"]
