"""A plain function's parameters and resolved annotations, read the cheap way when that is exact.

``inspect.signature`` and ``typing.get_type_hints`` are general (wrappers, partials, methods,
forward references nested anywhere) and cost a worker ~40 us a tool, plus the pages of
``inspect``'s and ``typing``'s shared objects a forked worker copies the first time it uses
them (CPython 3.11 writes a refcount on every object it touches: ~100 pages, 0.4 MiB, for a
worker's first tool). What a tool almost always is -- a plain ``def``/``async def`` whose
annotations are builtin classes, ``Any``, a class of its own module, or ``dict``/``list``
aliases of those, as written or as strings under ``from __future__ import annotations`` -- is
read here off the code object and resolved by name in the function's globals, giving what the
two would give (tests/test_tool_schemas.py holds the two to that). Anything else returns
``None``: the caller asks ``inspect``/``typing``, which also word every error.
"""

from __future__ import annotations

import builtins
import keyword
import types
from typing import Any, Final, Generic, Protocol

__all__ = ["EMPTY", "plain_doc", "plain_hints", "plain_parameters", "warm"]


class _Empty:
    """No default (``inspect.Parameter.empty`` plays this part on the slow path)."""


EMPTY: Final = _Empty
_SLOW: Final = object()
_NONE_TYPE: Final = type(None)
_CO_VARARGS: Final = 0x04
_CO_VARKEYWORDS: Final = 0x08
_CO_COROUTINE: Final = 0x80
#: A function carrying any of these is something ``inspect.signature`` reads another way
#: (a ``functools.wraps`` wrapper, an explicit signature, a ``partialmethod``).
_SIGNATURE_ATTRS: Final = ("__wrapped__", "__signature__", "_partialmethod")
#: Annotation strings that are not plain names, compiled once each (``typing`` compiles the
#: string on every call). Filled with common ones by :func:`warm` in the zygote, so a forked
#: worker finds them made; a worker adds its own.
_compiled: dict[str, types.CodeType] = {}
#: Written by plugins often enough to be worth compiling before any fork.
_COMMON: Final = (
    "dict[str, Any]",
    "list[Any]",
    "list[str]",
    "list[int]",
    "dict[str, str]",
    "dict[str, int]",
    "str | None",
    "int | None",
    "float | None",
    "bool | None",
    "list[dict[str, Any]]",
)


def plain_parameters(fn: Any) -> list[tuple[str, Any]] | None:
    """``(name, default or EMPTY)`` of each parameter of a plain function, in order, as
    ``inspect.signature`` lists them; ``None`` for anything it reads another way, and for
    ``*args``, ``**kwargs`` or positional-only parameters (the caller refuses those, in
    ``inspect``'s words)."""
    if type(fn) is not types.FunctionType:
        return None
    attrs = fn.__dict__
    if attrs and any(a in attrs for a in _SIGNATURE_ATTRS):
        return None
    code = fn.__code__
    if code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS) or code.co_posonlyargcount:
        return None
    positional = code.co_argcount
    defaults = fn.__defaults__ or ()
    if len(defaults) > positional:
        return None
    first_default = positional - len(defaults)
    kwdefaults = fn.__kwdefaults__ or {}
    params: list[tuple[str, Any]] = []
    for i, name in enumerate(code.co_varnames[: positional + code.co_kwonlyargcount]):
        if i >= positional:
            params.append((name, kwdefaults.get(name, EMPTY)))
        elif i >= first_default:
            params.append((name, defaults[i - first_default]))
        else:
            params.append((name, EMPTY))
    return params


def is_coroutine_function(fn: Any) -> bool:
    """``inspect.iscoroutinefunction`` of a plain function."""
    return bool(fn.__code__.co_flags & _CO_COROUTINE)


def plain_doc(fn: Any) -> str | None:
    """``inspect.getdoc(fn).strip()`` for a one-line docstring without tabs (``cleandoc``
    then only strips it); ``None``: ask ``inspect``."""
    doc = fn.__doc__
    if type(doc) is not str or "\n" in doc or "\t" in doc:
        return None
    return doc.strip()


def plain_hints(fn: Any) -> dict[str, Any] | None:
    """``typing.get_type_hints(fn, include_extras=True)`` of a function
    :func:`plain_parameters` read, when every annotation is one :func:`_known` takes;
    ``None``: ask ``typing`` (which also raises whatever an annotation's evaluation does)."""
    namespace = fn.__globals__
    annotations = fn.__annotations__
    if type(annotations) is not dict:
        return None
    hints: dict[str, Any] = {}
    for name, value in annotations.items():
        hint = _resolve(value, namespace)
        if hint is _SLOW:
            return None
        hints[name] = hint
    return hints


def _resolve(value: Any, namespace: dict[str, Any]) -> Any:
    if value is None:
        return _NONE_TYPE
    if type(value) is not str:
        # typing evaluates only the forward references inside a non-string annotation, and
        # a known one has none: it is returned as it is (or rebuilt equal to itself).
        return value if _known(value) else _SLOW
    if value.isascii() and value.isidentifier() and not keyword.iskeyword(value):
        # (ASCII only: the compiler NFKC-normalises other names before looking them up.)
        # What evaluating a bare name in the function's globals finds: the globals, then the
        # builtins they name.
        if value in namespace:
            hint = namespace[value]
        else:
            scope = namespace.get("__builtins__")
            if type(scope) is types.ModuleType:
                scope = vars(scope)
            elif scope is None:
                scope = vars(builtins)  # eval would add the running interpreter's
            if type(scope) is not dict or value not in scope:
                return _SLOW  # not found: typing raises the NameError
            hint = scope[value]
    else:
        code = _compiled.get(value)
        if code is None:
            try:
                code = compile(value, "<string>", "eval")
            except SyntaxError:
                return _SLOW
            _compiled[value] = code
        try:
            hint = eval(code, namespace, namespace)  # what typing.ForwardRef does with it
        except Exception:
            return _SLOW
    if hint is None:
        return _NONE_TYPE
    return hint if _known(hint) else _SLOW


def _known(hint: Any) -> bool:
    """Whether ``typing`` would give ``hint`` back as it is (or equal to it): ``Any``, a class
    (not ``Generic``/``Protocol`` themselves, which it refuses), or a ``list[...]``-style
    alias or ``X | Y`` union of those."""
    if hint is Any:
        return True
    kind = type(hint)
    if kind is types.GenericAlias:
        origin = hint.__origin__
        if hint.__unpacked__ or not isinstance(origin, type) or origin.__module__ != "builtins":
            return False  # collections.abc.Callable's are rebuilt differently; keep it simple
        return all(type(arg) is not str and _known(arg) for arg in hint.__args__)
    if kind is types.UnionType:
        return all(_known(arg) for arg in hint.__args__)
    return isinstance(hint, type) and hint is not Generic and hint is not Protocol


def warm() -> None:
    """In the zygote: compile the common annotation strings once for every fork."""
    namespace = {"Any": Any}
    for text in _COMMON:
        _resolve(text, namespace)
