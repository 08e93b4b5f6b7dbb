"""Readers for benchmark data in the layouts users download (see :mod:`evaluate.layouts.catalog`); the public
entry points are the ``load_*`` functions of :mod:`evaluate.datasets`."""

from evaluate.layouts.base import LayoutError

__all__ = ["LayoutError"]
