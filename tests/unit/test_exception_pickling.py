"""Every exception class of our four packages survives a pickle round-trip, as it must to cross a
Ray boundary (a task's error reaches the driver pickled). The classes are found by importing every
module, so a new exception is checked without anyone listing it here."""

from __future__ import annotations

import enum
import importlib
import inspect
import pickle
import pkgutil
import types
import typing
from pathlib import Path

import pytest

PACKAGES = ("cluster", "llm_core", "workers", "jobs")
SKIP = (".migrations",)  # alembic's env.py runs a migration when imported
SCALARS = {str: "dummy", int: 7, float: 0.5, bool: True, bytes: b"dummy", Path: Path("dummy"), object: "dummy"}


def _our_exceptions() -> list[type[BaseException]]:
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not any(part in info.name for part in SKIP):
                importlib.import_module(info.name)
    found, todo = set(), [BaseException]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.split(".")[0] in PACKAGES and "<locals>" not in sub.__qualname__:
                found.add(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def dummy(annotation):
    """A value of the annotated type: scalars, containers, unions, enums, and classes built from
    their own __init__ annotations (dataclasses such as FieldError)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in SCALARS:
        return SCALARS[annotation]
    if origin in (types.UnionType, typing.Union):
        return dummy(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return args[0]
    if origin in (list, set, frozenset, tuple) or annotation in (list, tuple):
        item = dummy(args[0]) if args and args[0] is not Ellipsis else "dummy"
        return (origin or annotation)([item])
    if origin is dict or annotation is dict:
        return {dummy(args[0]): dummy(args[1])} if args else {"key": "value"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return next(iter(annotation))
    if isinstance(annotation, type):
        return build(annotation)
    return "dummy"  # Any, or a form we do not know: a string is what most messages hold


def build(cls: type):
    """An instance made from the class's __init__ signature, with a dummy for each parameter."""
    init = cls.__init__
    if not inspect.isfunction(init):  # the built-in exception's own: takes a message
        return cls("dummy message")
    hints = typing.get_type_hints(init)
    kwargs, positional = {}, []
    for name, param in list(inspect.signature(init).parameters.items())[1:]:
        if param.kind is param.VAR_POSITIONAL:
            positional.append("dummy message")
        elif param.kind is not param.VAR_KEYWORD and param.default is param.empty:
            kwargs[name] = dummy(hints.get(name, str))
    if positional:
        return cls(*positional, **kwargs)
    return cls(**kwargs)


EXCEPTIONS = _our_exceptions()


def test_exceptions_are_found():
    names = {c.__name__ for c in EXCEPTIONS}
    assert {"ManifestError", "ClientError", "IllegalTransition"} <= names


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_exception_survives_a_pickle_round_trip(cls):
    original = build(cls)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert str(copy) == str(original)
