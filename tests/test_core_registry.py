"""The generic decorator registry: lookup, order, info records, the unknown-name error, removal."""

from dataclasses import dataclass

import pytest

from core.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class Info:
    dim: int
    note: str = ""


class UnknownThingError(UnknownNameError):
    pass


def test_register_keeps_the_value_and_looks_it_up_in_registration_order():
    things = Registry("thing", Info)

    @things.register("b", dim=2)
    def b() -> str:
        return "b"

    @things.register("a", dim=1, note="first")
    def a() -> str:
        return "a"

    assert b() == "b"  # the decorator returns the function unchanged
    assert things["b"] is b and things["a"] is a
    assert things.entry("a").info == Info(dim=1, note="first")
    assert things.names() == ("b", "a") and [entry.name for entry in things] == ["b", "a"]
    assert "a" in things and "c" not in things and len(things) == 2


def test_unknown_name_error_lists_the_registered_names():
    things = Registry("thing", Info, error=UnknownThingError)
    with pytest.raises(UnknownThingError, match="unknown thing 'x'; registered: none"):
        things.entry("x")
    things.register("alpha", dim=1)(object())
    things.register("beta", dim=2)(object())
    with pytest.raises(UnknownThingError, match=r"unknown thing 'gamma'; registered: alpha, beta") as error:
        things["gamma"]
    assert isinstance(error.value, UnknownNameError) and isinstance(error.value, ValueError)


def test_bad_registrations_fail_and_unregister_removes():
    things = Registry("thing", Info)
    things.register("a", dim=1)(object())
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.register("a", dim=3)(object())
    with pytest.raises(TypeError):
        things.register("c", size=3)(object())  # the info record rejects unknown keywords
    assert things.names() == ("a",) and things.entry("a").info.dim == 1
    assert things.unregister("a").info == Info(dim=1)
    assert "a" not in things
    with pytest.raises(UnknownNameError, match="unknown thing 'a'"):
        things.unregister("a")
