"""The affine classifier with known minimal perturbations: kept as a name for
:mod:`small_models`, where every small test model now lives."""

from small_models import apply, distance_to_boundary, model, random_weights

__all__ = ["apply", "distance_to_boundary", "model", "random_weights"]
