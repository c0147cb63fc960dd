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


# -- the cheap reading of a signature (worker/_signature.py) ------------------------------------


class Local:
    """A class of the tool's own module, as ``Context`` is to a plugin."""


def _typed(annotation: Any, *, as_text: bool, shadow: dict[str, Any] | None = None) -> Any:
    """``async def tool(ctx, value: <annotation>) -> <annotation>``, its annotations as
    written (objects) or as ``from __future__ import annotations`` leaves them (text), in a
    module namespace of its own (``shadow`` rebinds names there)."""
    scope: dict[str, Any] = {"Any": Any, "Local": Local, "Point": Point, **(shadow or {})}
    exec("async def tool(ctx, value): return None", scope)
    fn = scope["tool"]
    value = annotation if not as_text else annotation if isinstance(annotation, str) else None
    if as_text and value is None:
        value = getattr(annotation, "__name__", None) or repr(annotation).replace("typing.", "")
    fn.__annotations__ = {"ctx": "Local" if as_text else Local, "value": value, "return": value}
    return fn


#: Annotations, as text (what a plugin under ``from __future__ import annotations`` has):
#: each resolved exactly as typing.get_type_hints resolves it, or left to typing.
TEXT_ANNOTATIONS = [
    "str",
    "int",
    "float",
    "bool",
    "dict",
    "list",
    "object",
    "Any",
    "None",
    "Local",
    "Point",
    "dict[str, Any]",
    "list[Any]",
    "list[str]",
    "dict[str, list[int]]",
    "str | None",
    "int | str | None",
    "type[int]",
    "tuple[int, ...]",
    "list['Local']",
    "Generic",
    "True",
    "bytes",
    "typing.Optional[int]",
    "Literal['a']",
    "Annotated[int, 1]",
]


@pytest.mark.parametrize("text", TEXT_ANNOTATIONS)
def test_a_text_annotation_resolves_to_what_typing_resolves_it_to(text: str) -> None:
    import typing

    from cordon.worker import _signature

    scope = {
        "typing": typing,
        "Literal": Literal,
        "Annotated": Annotated,
        "Generic": typing.Generic,
    }
    fn = _typed(text, as_text=True, shadow=scope)
    fast = _signature.plain_hints(fn)
    try:
        slow = typing.get_type_hints(fn, include_extras=True)
    except Exception:
        slow = None
    if slow is None:
        # What typing refuses is left to typing (which then words the error).
        assert fast is None, f"{text!r}: typing refuses it, the fast path did not"
    elif fast is not None:
        assert fast == slow
        assert [type(v) for v in fast.values()] == [type(v) for v in slow.values()]


@pytest.mark.parametrize("annotation", [*SIMPLE, None, Local, *OTHER], ids=repr)
def test_an_annotation_object_resolves_to_what_typing_resolves_it_to(annotation: Any) -> None:
    import typing

    from cordon.worker import _signature

    fn = _typed(annotation, as_text=False)
    fast = _signature.plain_hints(fn)
    if fast is not None:
        assert fast == typing.get_type_hints(fn, include_extras=True)


def test_the_common_annotations_take_the_cheap_path() -> None:
    """The fast path is taken (a regression to typing's would not fail any other test)."""
    from cordon.worker import _signature

    for text in ["str", "int", "float", "bool", "Any", "Local", "None", "dict[str, Any]"]:
        assert _signature.plain_hints(_typed(text, as_text=True)) is not None, text
    for obj in [str, int, Any, Local, dict[str, Any], int | None]:
        assert _signature.plain_hints(_typed(obj, as_text=False)) is not None, obj


def test_a_shadowed_or_missing_name_resolves_as_typing_would() -> None:
    import typing

    from cordon.worker import _signature

    # The module's own "str" wins over the builtin, as in eval.
    fn = _typed("str", as_text=True, shadow={"str": Local})
    assert (
        _signature.plain_hints(fn)
        == typing.get_type_hints(fn)
        == {
            "ctx": Local,
            "value": Local,
            "return": Local,
        }
    )
    # A name the module does not have: typing raises, so the fast path steps aside.
    missing = _typed("Missing", as_text=True)
    assert _signature.plain_hints(missing) is None
    with pytest.raises(NameError):
        typing.get_type_hints(missing)
    # Builtins the module names as a dict (not the builtins module) are the ones looked in.
    own = _typed("int", as_text=True, shadow={"__builtins__": {"int": Local}})
    assert _signature.plain_hints(own) == {"ctx": Local, "value": Local, "return": Local}
    assert typing.get_type_hints(own) == {"ctx": Local, "value": Local, "return": Local}


SHAPES = [
    "def f(): pass",
    "def f(ctx): pass",
    "def f(ctx, a, b=1, c='x'): pass",
    "async def f(ctx, a, *, b, c=None, d=2): pass",
    "def f(a=1, *, b): pass",
    "def f(*, only=3): pass",
    "f = lambda ctx, x=0: x",
]


@pytest.mark.parametrize("source", SHAPES)
def test_parameters_read_off_the_code_are_what_inspect_reads(source: str) -> None:
    import inspect

    from cordon.worker import _signature

    scope: dict[str, Any] = {}
    exec(source, scope)
    fn = scope["f"]
    got = _signature.plain_parameters(fn)
    want = [
        (p.name, _signature.EMPTY if p.default is p.empty else p.default)
        for p in inspect.signature(fn).parameters.values()
    ]
    assert got == want
    assert _signature.is_coroutine_function(fn) == inspect.iscoroutinefunction(fn)


@pytest.mark.parametrize(
    "source",
    [
        "def f(*args): pass",
        "def f(**kwargs): pass",
        "def f(a, /, b): pass",
        "import functools\ndef g(x: int): pass\n@functools.wraps(g)\ndef f(*a, **k): pass",
        "import functools\ndef g(x, y): pass\nf = functools.partial(g, 1)",
        "class C:\n    def m(self, x): pass\nf = C().m",
        "class C:\n    def __call__(self, x): pass\nf = C()",
        "def f(x): pass\nf.__signature__ = None",
    ],
)
def test_what_inspect_reads_another_way_is_left_to_inspect(source: str) -> None:
    from cordon.worker import _signature

    scope: dict[str, Any] = {}
    exec(source, scope)
    assert _signature.plain_parameters(scope["f"]) is None


@pytest.mark.parametrize(
    "doc", ["One line.", "  padded  ", "", "with\ttab", "two\n  lines", None, "   ", "a\rb"]
)
def test_a_description_is_the_docstring_inspect_gives(doc: str | None) -> None:
    import inspect

    scope: dict[str, Any] = {}
    exec("async def tool(ctx): pass", scope)
    fn = scope["tool"]
    fn.__doc__ = doc
    assert _handler(fn).description == (inspect.getdoc(fn) or "").strip()


def test_hello_like_tools_are_registered_without_inspect_typing_or_msgspec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registration reads a plain tool off its code, describes it without msgspec and makes
    no struct: those are made on the tool's first call."""
    import inspect
    import typing

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a plain tool went the slow way")

    plugin = Plugin()
    with monkeypatch.context() as patch:
        for module, name in [
            (inspect, "signature"),
            (inspect, "getdoc"),
            (typing, "get_type_hints"),
            (msgspec, "defstruct"),
            (_plugin, "_object_schema"),
        ]:
            patch.setattr(module, name, refuse)
        for text in ["str", "int", "float", "bool", "Any", "dict[str, Any]", "None"]:
            fn = _typed(text, as_text=True)
            fn.__doc__ = "A tool."
            plugin.tool(name=f"t_{len(plugin.handlers)}")(fn)
    for handler in plugin.handlers.values():
        assert handler._params_type is None
        assert handler._decoder is None


#: Arguments a simple tool ``(name: str, count: int = 0, ratio: float = 1.0, flag: bool =
#: False, value: Any = None)`` must refuse, and the field each error names.
BAD_ARGUMENTS = [
    (b'{"name": 1}', "name"),
    (b"{}", "name"),
    (b'{"name": "x", "count": 1.5}', "count"),
    (b'{"name": "x", "count": true}', "count"),
    (b'{"name": "x", "ratio": "1"}', "ratio"),
    (b'{"name": "x", "flag": 0}', "flag"),
    (b'{"name": "x", "other": 0}', "other"),
    (b'["x", 1, 1.0, false, null, 6]', None),
    (b'["x", "y"]', "count"),
    (b"[1]", "name"),
    (b'{"name": "x"', None),
    (b"3", None),
]


@pytest.mark.parametrize(("raw", "field"), BAD_ARGUMENTS)
def test_a_struct_made_on_the_first_call_refuses_what_one_made_at_registration_did(
    raw: bytes, field: str | None
) -> None:
    from cordon.protocol import InvalidParams

    fn = _tool(
        {"name": str, "count": int, "ratio": float, "flag": bool, "value": Any},
        {"count": 0, "ratio": 1.0, "flag": False, "value": None},
    )
    lazy = _handler(fn)
    assert lazy._params_type is None
    # The struct as registration made it before (and still does for any other signature).
    eager = _handler(fn)
    eager._params_type = msgspec.defstruct(
        "tool_params", list(eager._fields), kw_only=True, forbid_unknown_fields=True
    )
    eager.prepare()
    errors = []
    for handler in (lazy, eager):
        with pytest.raises(InvalidParams) as info:
            handler.decode_arguments(msgspec.Raw(raw))
        errors.append((info.value.message, info.value.field))
    assert errors[0] == errors[1]
    assert errors[0][1] == field
    assert lazy.decode_arguments(msgspec.Raw(b'["x", 2]')) == {
        "name": "x",
        "count": 2,
        "ratio": 1.0,
        "flag": False,
        "value": None,
    }


@pytest.mark.parametrize(
    ("annotation", "default"), list(itertools.product(SIMPLE, DEFAULTS)), ids=repr
)
def test_every_simple_parameter_left_for_the_first_call_can_be_decoded(
    annotation: Any, default: Any
) -> None:
    """What registration no longer makes for a simple signature can always be made."""
    defaults = {} if default is REQUIRED else {"value": default}
    handler = _handler(_tool({"value": annotation}, defaults))
    assert handler._params_type is None
    kind = handler.params_schema["properties"]["value"].get("type")
    sample = {"string": '"x"', "integer": "1", "number": "1.5", "boolean": "true"}.get(kind)
    sample = sample or {"object": "{}", "array": "[]", "null": "null"}.get(kind, "1")
    assert list(handler.decode_arguments(msgspec.Raw(f"[{sample}]".encode()))) == ["value"]
    if defaults:
        assert handler.decode_arguments(msgspec.Raw(b"{}")) == {"value": default}


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("async def tool(ctx, items: list = [1]): pass", "parameter types cannot be validated"),
        ("async def tool(ctx, m: dict = {1: 2}): pass", "parameter types cannot be validated"),
        ("async def tool(ctx, __dict__: int): pass", "parameter types cannot be validated"),
        ("async def tool(ctx, x: 'Missing'): pass", "cannot resolve type hints"),
        ("async def tool(ctx) -> 'Missing': pass", "cannot resolve type hints"),
        ("async def tool(ctx: 'Missing'): pass", "cannot resolve type hints"),
        ("async def tool(ctx, x: 'not valid('): pass", "cannot resolve type hints"),
        ("async def tool(ctx, x: object()): pass", "parameter types cannot be validated"),
        ("async def tool(ctx, *rest: int): pass", "*args/**kwargs"),
        ("async def tool(ctx, x, /): pass", "positional-only parameter 'x'"),
    ],
)
def test_a_signature_cordon_cannot_serve_fails_at_registration_naming_the_tool(
    source: str, problem: str
) -> None:
    scope: dict[str, Any] = {}
    exec(source, scope)
    with pytest.raises(_plugin.PluginDefinitionError) as err:
        Plugin().tool(scope["tool"])
    assert "tool 'tool'" in str(err.value)
    assert problem in str(err.value)


def _registered(fn: Any, kind: str) -> tuple[Any, ...]:
    """Everything registration makes of ``fn`` that anyone sees: the handler's description,
    parameters and schemas, or the error it raises."""
    plugin = Plugin()
    try:
        plugin._register(kind, fn, None, None, {"topic": "a.*"} if kind == "event_handler" else {})  # type: ignore[arg-type]
    except Exception as exc:
        return ("refused", type(exc).__name__, str(exc))
    (h,) = plugin.handlers.values()
    return (
        h.name,
        h.description,
        h.param_names,
        h.wants_ctx,
        h.is_async,
        msgspec.json.encode(h.params_schema),
        msgspec.json.encode(h.result_schema),
        h.passes,
        h.task,
        [f if len(f) == 2 else (f[0], f[1], repr(f[2])) for f in h._fields],
    )


#: Signatures (``{A}``/``{B}`` annotations, ``{R}`` the result's, ``{d}`` a default) and the
#: annotations tried in them: every combination is registered the cheap way and by inspect
#: and typing alone, and must come out the same, refusals and their words included.
CORPUS_SHAPES = [
    "async def f(ctx, a: {A}{d}, *, b: {B} = 1) -> {R}:\n    '''Doc.'''",
    "def f(a: {A}, b: {B}{d}) -> {R}:\n    '''Two\n    lines.'''",
    "def f(ctx: {A}, topic: {B}{d}): pass",
    "def f(ctx, /, a: {A}{d}): pass",
    "def f(*ctx, a: {A}{d}): pass",
    "def f(a: {A}, **kw: {B}): pass",
    "def f(_a: {A}{d}) -> {R}: pass",
]
CORPUS_ANNOTATIONS = [
    "str",
    "Any",
    "None",
    "Local",
    "Point",
    "dict[str, Any]",
    "int | None",
    "Optional[int]",
    "Literal['a']",
    "Missing",
    "list",
    "list['Local']",
    "Final[int]",
]
CORPUS_DEFAULTS = ["", " = None", " = 'x'", " = []", " = [1]"]


@pytest.mark.parametrize("future", [True, False], ids=["text", "objects"])
@pytest.mark.parametrize("shape", CORPUS_SHAPES)
def test_a_tool_read_the_cheap_way_is_registered_as_inspect_and_typing_register_it(
    shape: str, future: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typing import Final, Optional

    cases = []
    for a, b, r, d in itertools.product(
        CORPUS_ANNOTATIONS, CORPUS_ANNOTATIONS[:5], CORPUS_ANNOTATIONS[:3], CORPUS_DEFAULTS
    ):
        source = shape.format(A=a, B=b, R=r, d=d)
        scope = {"Any": Any, "Local": Local, "Point": Point, "Optional": Optional}
        scope.update(Literal=Literal, Final=Final)
        try:
            exec(("from __future__ import annotations\n" if future else "") + source, scope)
        except NameError:
            continue  # an unknown name evaluated at definition: no function to register
        cases.append((source, scope["f"]))
    assert cases
    for kind in ("tool", "event_handler"):
        cheap = [_registered(fn, kind) for _, fn in cases]
        with monkeypatch.context() as patch:
            patch.setattr(_plugin, "plain_parameters", lambda fn: None)
            patch.setattr(_plugin, "plain_doc", lambda fn: None)
            slow = [_registered(fn, kind) for _, fn in cases]
        for (source, _), got, want in zip(cases, cheap, slow, strict=True):
            assert got == want, f"{kind}: {source}"
