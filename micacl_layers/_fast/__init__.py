"""Optional fast kernels (private): same values as the plain autograd code, less time or memory.

Nothing here is public API. Each kernel runs only where :mod:`micacl_layers.config` allows it;
the "Internals" docs page lists the kernels, when each runs and how each was checked.
"""
