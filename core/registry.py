"""A registry of named values filled by a decorator, with an info record beside each value.

>>> MODELS = Registry("model", ModelInfo)
>>> @MODELS.register("tiny", dim=8)
... def tiny() -> nn.Module: ...
>>> MODELS["tiny"]            # the decorated function
>>> MODELS.entry("tiny").info # ModelInfo(dim=8)

``info`` builds the record from the decorator's keywords (a dataclass checks them when the module registering
the value is imported). Looking up a name nothing is registered under raises ``error``, an
:class:`UnknownNameError` whose message lists the registered names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741


class UnknownNameError(ValueError):
    """Nothing is registered under the name; the message lists what is."""


@dataclass(frozen=True)
class Entry(Generic[T, I]):
    """One registered value with its name and info record."""

    name: str
    value: T
    info: I


class Registry(Generic[T, I]):
    """Values registered under unique names, in registration order.

    ``kind`` names what is registered in messages (``"image backbone"``); ``info`` turns the keywords of
    :meth:`register` into the info record; ``error`` is the :class:`UnknownNameError` subclass lookups raise.
    """

    def __init__(
        self, kind: str, info: Callable[..., I], *, error: type[UnknownNameError] = UnknownNameError
    ) -> None:
        self.kind = kind
        self._info = info
        self._error = error
        self._entries: dict[str, Entry[T, I]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator: register the decorated value under ``name`` with ``info``; returns the value unchanged."""

        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, value, self._info(**info))
            return value

        return add

    def unregister(self, name: str) -> Entry[T, I]:
        """Remove ``name``; returns its entry."""
        entry = self.entry(name)
        del self._entries[name]
        return entry

    def entry(self, name: str) -> Entry[T, I]:
        try:
            return self._entries[name]
        except KeyError:
            raise self.unknown(name) from None

    def __getitem__(self, name: str) -> T:
        return self.entry(name).value

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T, I]]:
        return iter(tuple(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def unknown(self, name: str) -> UnknownNameError:
        """The error for a name nothing is registered under, listing the registered names."""
        registered = ", ".join(self._entries) or "none"
        return self._error(f"unknown {self.kind} {name!r}; registered: {registered}")
