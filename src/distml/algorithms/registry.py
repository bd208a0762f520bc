"""The algorithm registry: every algorithm file registers itself in ``ALGORITHMS``.

It lives below the algorithms (as ``optim/base.py`` holds ``OPTIMIZERS``), so an
algorithm imports it without importing the package that imports every algorithm.
"""

from distml.registry import Registry

ALGORITHMS = Registry("algorithm")
