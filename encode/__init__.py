"""Stage 1: run frozen unimodal backbones over image–caption data and cache pooled features in HDF5."""

__version__ = "0.1.0"
