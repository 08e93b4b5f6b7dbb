"""Errors raised while resolving or loading a backbone; both are ValueErrors with a message saying what to do."""

from __future__ import annotations

from core.registry import UnknownNameError


class UnknownModelError(UnknownNameError):
    """The model name matches no backbone family, known model or local folder."""


class RemoteCodeError(ValueError):
    """The checkpoint needs its own modelling code and ``trust_remote_code`` was not given."""


def remote_code_error(name: str) -> RemoteCodeError:
    return RemoteCodeError(
        f"{name} ships its own modelling code (Python files executed when the model is loaded). "
        "Review that code, then pass --trust-remote-code (trust_remote_code=True) to allow it."
    )
