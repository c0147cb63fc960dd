"""A tool's JSON Schemas are built without msgspec's schema machinery when its signature is
simple (str, int, float, bool, Any; scalar defaults) — and are then byte for byte what msgspec
builds, which is what every other signature still gets. Compared as encoded JSON, so key
order (what ``cordon plugin info`` and MCP clients see) is part of the check."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
import pytest

from cordon.worker import Plugin, _plugin
from cordon.worker._plugin import Handler, _object_schema

REQUIRED = object()
SIMPLE = [str, int, float, bool, dict, list, dict[str, Any], list[Any], Any, object]
DEFAULTS = [REQUIRED, None, 0, -3, 1.5, float("inf"), True, False, "", "hi"]


class Point(msgspec.Struct):
    x: int
    y: int = 0


OTHER = [
    list[str],
    dict[str, int],
    int | None,
    Literal["a", "b"],
    Annotated[int, msgspec.Meta(ge=1)],
    Point,
    datetime.datetime,
    bytes,
]


def _tool(annotations: dict[str, Any], defaults: dict[str, Any]) -> Callable[..., Any]:
    """``async def tool(ctx, a, b, ...)`` with these annotations and defaults, in order."""
    names = list(annotations)
    required = [n for n in names if n not in defaults]
    optional = [n for n in names if n in defaults]
    params = ", ".join(["ctx", *required, *(f"{n}=__d[{n!r}]" for n in optional)])
    scope: dict[str, Any] = {"__d": defaults}
    exec(f"async def tool({params}): return None", scope)
    fn = scope["tool"]
    fn.__annotations__ = {n: annotations[n] for n in [*required, *optional]}
    return fn  # type: ignore[no-any-return]


def _handler(fn: Callable[..., Any]) -> Handler:
    plugin = Plugin()
    plugin.tool(fn)
    return plugin.handlers[("tool", "tool")]


def _same(a: Any, b: Any) -> None:
    assert msgspec.json.encode(a) == msgspec.json.encode(b)


@pytest.mark.parametrize(
    ("annotation", "default"), list(itertools.product(SIMPLE, DEFAULTS)), ids=repr
)
def test_a_simple_parameter_is_described_exactly_as_msgspec_would(
    annotation: Any, default: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = {} if default is REQUIRED else {"value": default}

    def not_msgspec(params_type: Any) -> dict[str, Any]:
        raise AssertionError("a simple signature went msgspec's way")

    with monkeypatch.context() as patch:
        patch.setattr(_plugin, "_object_schema", not_msgspec)
        handler = _handler(_tool({"value": annotation}, defaults))
    _same(handler.params_schema, _object_schema(handler.params_type))
    _same(handler.contribution().params_schema, _object_schema(handler.params_type))


def test_several_simple_parameters_keep_their_order_and_required_list() -> None:
    handler = _handler(
        _tool(
            {"name": str, "count": int, "ratio": float, "flag": bool, "value": Any},
            {"ratio": 0.5, "flag": False, "value": None},
        )
    )
    _same(handler.params_schema, _object_schema(handler.params_type))
    assert handler.params_schema["required"] == ["name", "count"]


@pytest.mark.parametrize("annotation", OTHER, ids=repr)
def test_any_other_parameter_type_is_described_by_msgspec(annotation: Any) -> None:
    handler = _handler(_tool({"name": str, "other": annotation}, {}))
    _same(handler.params_schema, _object_schema(handler.params_type))


def test_a_default_that_is_not_a_json_scalar_is_described_by_msgspec() -> None:
    handler = _handler(_tool({"when": str, "items": Any}, {"items": (1, 2)}))
    _same(handler.params_schema, _object_schema(handler.params_type))
    assert msgspec.json.encode(handler.params_schema["properties"]["items"]) == b'{"default":[1,2]}'


@pytest.mark.parametrize("annotation", [*SIMPLE[:-1], None, *OTHER, dict[str, object]], ids=repr)
def test_a_result_type_is_described_exactly_as_msgspec_would(annotation: Any) -> None:
    fn = _tool({}, {})
    fn.__annotations__["return"] = annotation
    # typing.get_type_hints reads "-> None" as NoneType; a type msgspec cannot describe
    # (dict[str, object]) gets no result schema.
    try:
        expected = msgspec.json.schema(type(None) if annotation is None else annotation)
    except TypeError:
        expected = {}
    _same(_handler(fn).result_schema, expected)


def test_an_event_handlers_arguments_are_described_as_before() -> None:
    plugin = Plugin()

    @plugin.on_event("build.*")
    async def on_build(ctx: Any, topic: str, payload: Any) -> None:
        return None

    handler = plugin.handlers[("event_handler", "on_build")]
    _same(handler.params_schema, _object_schema(handler.params_type))
