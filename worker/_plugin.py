"""The authoring API: a :class:`Plugin` collects what a plugin contributes.

Each contributed function's signature becomes a msgspec struct, so arguments are validated
(and a JSON Schema derived) before plugin code runs, and a bad call names the offending field.
Registration does only what the host is told and what could fail: a simple signature's struct
is made on the function's first call (see :class:`Handler`).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable
from types import FunctionType
from typing import Any, Final, TypeVar, overload

import msgspec

from cordon.protocol import Contribution, ContributionKind, InvalidParams

from ._signature import EMPTY, is_coroutine_function, plain_doc, plain_hints, plain_parameters
from ._signature import warm as warm_signatures

__all__ = ["Handler", "Plugin", "PluginDefinitionError", "warm"]

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")

#: What the host passes an event handler, by name: ``handler(ctx, topic=..., payload=...,
#: source=...)``. A handler takes any of them (``ctx`` first, optional) and only gets those.
EVENT_ARGS: Final = ("topic", "payload", "source")
_EVENT_TYPES: Final[dict[str, Any]] = {"topic": str, "payload": Any, "source": str}


class PluginDefinitionError(TypeError):
    """A plugin declared something cordon cannot serve (bad name, ``*args``, duplicate...)."""


class Handler:
    """One contributed function: what the host is told of it, and how a call reaches it.

    The parameters' msgspec struct and its decoder are made on the function's first call,
    not at registration: a worker serves a few of its tools, often one, and each struct and
    decoder costs ~20 us and pages of msgspec's shared state a forked worker would copy
    (``_build_handler`` has still checked, at registration, that they can be made).
    """

    __slots__ = (
        "_decoder",
        "_fields",
        "_params_type",
        "_type_name",
        "description",
        "fn",
        "is_async",
        "kind",
        "name",
        "options",
        "param_names",
        "params_schema",
        "passes",
        "result_schema",
        "task",
        "wants_ctx",
    )

    def __init__(
        self,
        *,
        kind: ContributionKind,
        name: str,
        fn: Callable[..., Any],
        description: str,
        fields: list[tuple[str, Any] | tuple[str, Any, Any]],
        params_type: type[msgspec.Struct] | None,
        wants_ctx: bool,
        is_async: bool,
        options: dict[str, Any],
        params_schema: dict[str, Any],
        result_schema: dict[str, Any],
        passes: tuple[str, ...] | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.fn = fn
        self.description = description
        self._fields = fields
        self.param_names = tuple(f[0] for f in fields)
        self._type_name = _struct_name(name)
        self._params_type = params_type
        self.wants_ctx = wants_ctx
        self.is_async = is_async
        self.options = options
        #: Built when the function is registered (cheaply, for the common signatures) and
        #: reused by every :meth:`contribution`.
        self.params_schema = params_schema
        self.result_schema = result_schema
        #: For an event handler taking only some of :data:`EVENT_ARGS`: the ones it takes.
        self.passes = passes
        #: The name of the asyncio task each call runs in.
        self.task = f"cordon {kind} {name}"
        #: Named arguments (an object) or positional ones (an array), in one pass: made on
        #: the first call, then reused (not the type lookup ``msgspec.json.decode(type=...)``
        #: does per call).
        self._decoder: msgspec.json.Decoder[Any] | None = None

    def __repr__(self) -> str:
        return f"Handler({self.kind} {self.name!r})"

    def prepare(self) -> msgspec.json.Decoder[Any]:
        """The arguments' decoder, made now if it was not yet (else on the first call)."""
        if self._decoder is None:
            self._decoder = msgspec.json.Decoder(self.params_type | list[Any])
        return self._decoder

    @property
    def params_type(self) -> type[msgspec.Struct]:
        """The struct the arguments decode into: one field per parameter, in order."""
        params_type = self._params_type
        if params_type is None:
            params_type = self._params_type = _params_struct(self._type_name, self._fields)
        return params_type

    def contribution(self) -> Contribution:
        return Contribution(
            kind=self.kind,
            name=self.name,
            description=self.description,
            params_schema=self.params_schema,
            result_schema=self.result_schema,
            options=self.options,
        )

    def decode_arguments(self, raw: msgspec.Raw) -> dict[str, Any]:
        """Validate JSON arguments against the signature; :class:`InvalidParams` names the
        field. Arrays are accepted as positional arguments, as JSON-RPC allows."""
        decoder = self._decoder or self.prepare()
        try:
            value = decoder.decode(raw or b"{}")
            if type(value) is list:
                items = value
                if len(items) > len(self.param_names):
                    raise InvalidParams(
                        f"{self.kind} {self.name!r} takes {len(self.param_names)} "
                        f"argument(s), got {len(items)}",
                        field=None,
                    )
                value = msgspec.convert(
                    dict(zip(self.param_names, items, strict=False)), type=self.params_type
                )
        except msgspec.ValidationError as exc:
            text = str(exc)
            raise InvalidParams(
                f"invalid arguments for {self.kind} {self.name!r}: {text}",
                field=_field_of(text),
            ) from None
        except msgspec.DecodeError as exc:
            raise InvalidParams(f"arguments are not valid JSON: {exc}", field=None) from None
        # The struct's fields are exactly the parameters, in order (see _build_handler).
        args = msgspec.structs.asdict(value)
        if self.passes is not None:
            return {k: args[k] for k in self.passes}
        return args


def _struct_name(handler_name: str) -> str:
    return f"{handler_name.replace('.', '_').replace('-', '_')}_params"


def _params_struct(
    name: str, fields: list[tuple[str, Any] | tuple[str, Any, Any]]
) -> type[msgspec.Struct]:
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True)


def _field_of(message: str) -> str | None:
    m = re.search(r"at `\$\.([^`]+)`", message) or re.search(r"field `([^`]+)`", message)
    return m.group(1) if m else None


def _object_schema(params_type: type[msgspec.Struct]) -> dict[str, Any]:
    (ref,), components = msgspec.json.schema_components([params_type])
    name = ref["$ref"].rsplit("/", 1)[-1]
    schema = dict(components.pop(name))
    schema.pop("title", None)
    if components:
        schema["$defs"] = components
    return schema


#: Annotations described here rather than by msgspec's schema machinery (~0.15 ms a tool in
#: a fresh worker): exactly what msgspec gives for each (tests compare the two). Anything
#: else takes msgspec's way.
_SIMPLE: Final[tuple[tuple[Any, dict[str, str]], ...]] = (
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (type(None), {"type": "null"}),
    (Any, {}),
    (dict, {"type": "object"}),
    (list, {"type": "array"}),
)
#: The same, for generic aliases (equal, never identical, to the one written here).
_SIMPLE_ALIASES: Final[tuple[tuple[Any, dict[str, str]], ...]] = (
    (dict[str, Any], {"type": "object"}),
    (list[Any], {"type": "array"}),
)
#: Defaults msgspec puts in a schema as they are (``to_builtins`` of these is the value).
_SCALAR_DEFAULTS: Final = (str, int, float, bool, type(None))


def _simple(annotation: Any) -> dict[str, Any] | None:
    for known, schema in _SIMPLE:
        if annotation is known:
            return dict(schema)
    for known, schema in _SIMPLE_ALIASES:
        if type(annotation) is type(known) and annotation == known:
            return dict(schema)
    return None


def _simple_object_schema(
    fields: list[tuple[str, Any] | tuple[str, Any, Any]],
) -> dict[str, Any] | None:
    """:func:`_object_schema` of the struct ``fields`` define (``kw_only``,
    ``forbid_unknown_fields``, as :func:`_build_handler` makes it), or ``None`` unless every
    field is one of :data:`_SIMPLE` with no default or a scalar one."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, annotation, *default in fields:
        schema = _simple(annotation)
        if schema is None:
            return None
        if not default:
            required.append(name)
        elif type(default[0]) in _SCALAR_DEFAULTS:
            schema["default"] = default[0]
        else:
            return None
        properties[name] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _result_schema(annotation: Any) -> dict[str, Any]:
    if annotation is EMPTY or annotation is None:
        return {}
    simple = _simple(annotation)
    if simple is not None:
        return simple
    try:
        return msgspec.json.schema(annotation)
    except (TypeError, ValueError):
        return {}


def _build_handler(
    kind: ContributionKind,
    fn: Callable[..., Any],
    name: str | None,
    description: str | None,
    options: dict[str, Any],
) -> Handler:
    """Everything of ``fn`` the host is told (its schemas) and every check a call could
    fail: a function cordon cannot serve fails here, naming it, never on its first call."""
    if not callable(fn):
        raise PluginDefinitionError(f"@{kind} needs a function, got {fn!r}")
    handler_name = name or fn.__name__
    if not _NAME.fullmatch(handler_name):
        raise PluginDefinitionError(f"{kind} name {handler_name!r} is not a valid name")
    plain = type(fn) is FunctionType
    # A plain function's parameters and annotations off its code object (see _signature);
    # everything else, and every refusal, by inspect and typing.
    params = plain_parameters(fn) if kind != "event_handler" else None
    hints = plain_hints(fn) if params is not None else None
    passes: tuple[str, ...] | None = None
    if params is None or hints is None:
        params, hints, passes = _inspected(kind, handler_name, fn)
    wants_ctx = bool(params) and params[0][0] == "ctx"
    if wants_ctx:
        params = params[1:]
    if kind == "event_handler":
        # Decoded as the host sends them; the handler gets the ones it named.
        params = [(n, EMPTY) for n in EVENT_ARGS]
        hints = dict(_EVENT_TYPES)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for param, default in params:
        annotation = hints.get(param, Any)
        if annotation is object:
            # "anything" as people write it; msgspec knows it as Any.
            annotation = Any
        fields.append((param, annotation) if default is EMPTY else (param, annotation, default))
    params_type: type[msgspec.Struct] | None = None
    # A simple signature's struct can always be made (tests make each one); it is made on
    # the first call. Any other is made now: making it is the check that it can be.
    params_schema = _simple_object_schema(fields)
    if params_schema is None or any(f[0].startswith("_") for f in fields):
        try:
            params_type = _params_struct(_struct_name(handler_name), fields)
            if params_schema is None:
                params_schema = _object_schema(params_type)
        except (TypeError, ValueError) as exc:
            raise PluginDefinitionError(
                f"{kind} {handler_name!r}: parameter types cannot be validated: {exc}"
            ) from exc
    doc = description.strip() if description is not None else plain_doc(fn) if plain else None
    if doc is None:
        doc = (inspect.getdoc(fn) or "").strip()
    handler = Handler(
        kind=kind,
        name=handler_name,
        fn=fn,
        description=doc,
        fields=fields,
        params_type=params_type,
        wants_ctx=wants_ctx,
        is_async=is_coroutine_function(fn) if plain else inspect.iscoroutinefunction(fn),
        options=options,
        params_schema=params_schema,
        result_schema=_result_schema(hints.get("return", EMPTY)),
        passes=passes,
    )
    if params_type is not None:
        handler.prepare()
    return handler


def _inspected(
    kind: ContributionKind, handler_name: str, fn: Callable[..., Any]
) -> tuple[list[tuple[str, Any]], dict[str, Any], tuple[str, ...] | None]:
    """``(parameters, hints, passes)`` by ``inspect.signature`` and ``typing.get_type_hints``:
    for what :mod:`._signature` does not read, and to refuse what cordon cannot serve."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise PluginDefinitionError(
            f"{kind} {handler_name!r}: cannot resolve type hints: {exc}"
        ) from exc
    params = list(sig.parameters.values())
    # Whatever its kind, a first parameter named ctx is the context's, never checked here.
    checked = params[1:] if params and params[0].name == "ctx" else params
    passes: tuple[str, ...] | None = None
    if kind == "event_handler":
        passes = _check_event_handler(handler_name, checked, hints)
        if passes == EVENT_ARGS:
            passes = None
        return [(p.name, EMPTY) for p in params], hints, passes
    for p in checked:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise PluginDefinitionError(
                f"{kind} {handler_name!r}: *args/**kwargs cannot be described as parameters"
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise PluginDefinitionError(
                f"{kind} {handler_name!r}: positional-only parameter {p.name!r} is not supported"
            )
    return [(p.name, EMPTY if p.default is p.empty else p.default) for p in params], hints, passes


def _check_event_handler(
    name: str, params: list[inspect.Parameter], hints: dict[str, Any]
) -> tuple[str, ...]:
    """The event arguments ``params`` takes, or :class:`PluginDefinitionError` naming what
    the host could never call it with."""

    def refuse(problem: str) -> PluginDefinitionError:
        return PluginDefinitionError(
            f"event handler {name!r}: {problem}; write handler(ctx, topic, payload, source) "
            "with any of the three, by those names (ctx first, also optional)"
        )

    taken: list[str] = []
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            return EVENT_ARGS
        if p.kind is p.VAR_POSITIONAL:
            raise refuse(f"*{p.name} cannot receive an event")
        if p.name not in EVENT_ARGS:
            raise refuse(f"parameter {p.name!r} is not one the host passes")
        if p.kind is p.POSITIONAL_ONLY:
            raise refuse(f"parameter {p.name!r} is positional-only; events are passed by name")
        annotation = hints.get(p.name, Any)
        if p.name in ("topic", "source") and annotation not in (str, Any, object):
            raise refuse(f"{p.name} is always a str, not {annotation!r}")
        taken.append(p.name)
    return tuple(n for n in EVENT_ARGS if n in taken)


def _warm_sample(
    ctx: Any,
    text: str,
    count: int = 0,
    ratio: float = 1.0,
    flag: bool = False,
    items: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    value: Any = None,
) -> dict[str, Any]:
    """A stand-in tool of cordon's own, registered only by :func:`warm`."""
    return {}


async def _warm_simple(ctx: Any, text: str, count: int = 0, flag: bool = False) -> str:
    """Another, with a simple signature: described without msgspec, its struct made when
    it is first called."""
    return text


def warm() -> None:
    """Pay the first-use costs of a plugin's import once, in the zygote before it forks:
    msgspec's schema code compiles a regular expression and fills type caches on its first
    schema, ~0.7 ms of every forked worker's plugin import otherwise. Only cordon's own
    stand-in function is described; nothing of it is kept. The simple one is also called
    (its arguments decoded): the struct and decoder a worker makes on a tool's first call
    are then made by code, and of types, the zygote already ran."""
    _build_handler("tool", _warm_sample, None, None, {}).contribution()
    simple = _build_handler("tool", _warm_simple, None, None, {})
    simple.contribution()
    simple.decode_arguments(msgspec.Raw(b'{"text":"x","count":1}'))
    warm_signatures()
    # The step before the plugin's import: standard logging routed to the host, its channel
    # named by each worker (see _logging.install).
    from ._logging import install

    install(None)


Hook = Callable[[Any], Awaitable[None] | None]


class Plugin:
    """What a plugin module exposes (``entry = "module:plugin"`` in ``plugin.toml``).

    >>> plugin = Plugin()
    >>> @plugin.tool
    ... async def greet(ctx, name: str) -> str:
    ...     return f"Hello {name}"
    """

    def __init__(self) -> None:
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.activate_hooks: list[Hook] = []
        self.deactivate_hooks: list[Hook] = []

    def _register(
        self,
        kind: ContributionKind,
        fn: Callable[..., Any],
        name: str | None,
        description: str | None,
        options: dict[str, Any] | None = None,
    ) -> None:
        handler = _build_handler(kind, fn, name, description, options or {})
        key = (kind, handler.name)
        if key in self.handlers:
            raise PluginDefinitionError(f"{kind} {handler.name!r} is defined twice")
        self.handlers[key] = handler

    def _decorator(
        self,
        kind: ContributionKind,
        fn: F | None,
        name: str | None,
        description: str | None,
        options: dict[str, Any] | None = None,
    ) -> Any:
        def register(f: F) -> F:
            self._register(kind, f, name, description, options)
            return f

        return register(fn) if fn is not None else register

    @overload
    def tool(self, fn: F, /) -> F: ...
    @overload
    def tool(
        self, fn: None = None, /, *, name: str | None = None, description: str | None = None
    ) -> Callable[[F], F]: ...
    def tool(
        self, fn: F | None = None, /, *, name: str | None = None, description: str | None = None
    ) -> Any:
        """Contribute a tool: a typed function the host (or a model) can call."""
        return self._decorator("tool", fn, name, description)

    @overload
    def command(self, fn: F, /) -> F: ...
    @overload
    def command(
        self, fn: None = None, /, *, name: str | None = None, description: str | None = None
    ) -> Callable[[F], F]: ...
    def command(
        self, fn: F | None = None, /, *, name: str | None = None, description: str | None = None
    ) -> Any:
        """Contribute a command: a user-invoked action of the host application."""
        return self._decorator("command", fn, name, description)

    @overload
    def provider(self, fn: F, /) -> F: ...
    @overload
    def provider(
        self, fn: None = None, /, *, name: str | None = None, description: str | None = None
    ) -> Callable[[F], F]: ...
    def provider(
        self, fn: F | None = None, /, *, name: str | None = None, description: str | None = None
    ) -> Any:
        """Contribute a provider: supplies data to a host extension point on request."""
        return self._decorator("provider", fn, name, description)

    @overload
    def middleware(self, fn: F, /) -> F: ...
    @overload
    def middleware(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        phase: str = "before_request",
    ) -> Callable[[F], F]: ...
    def middleware(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        phase: str = "before_request",
    ) -> Any:
        """Contribute middleware; ``phase`` is ``before_request`` or ``after_response``."""
        if phase not in ("before_request", "after_response"):
            raise PluginDefinitionError(f"middleware phase {phase!r} is not known")
        if fn is not None:
            return self._decorator(
                "middleware", fn, name or f"{fn.__name__}", description, {"phase": phase}
            )

        def register(f: F) -> F:
            self._register("middleware", f, name, description, {"phase": phase})
            return f

        return register

    def on_event(self, topic: str, *, name: str | None = None) -> Callable[[F], F]:
        """Handle host events whose topic matches ``topic`` (a glob)."""

        def register(f: F) -> F:
            self._register("event_handler", f, name or f.__name__, None, {"topic": topic})
            return f

        return register

    def on_activate(self, fn: F) -> F:
        """Run once when the worker is activated, before it serves calls."""
        self.activate_hooks.append(fn)
        return fn

    def on_deactivate(self, fn: F) -> F:
        """Run once when the host shuts the worker down."""
        self.deactivate_hooks.append(fn)
        return fn

    def contributions(self) -> list[Contribution]:
        return [h.contribution() for h in self.handlers.values()]
