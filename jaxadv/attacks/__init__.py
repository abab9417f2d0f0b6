"""Attack families, one module each."""
