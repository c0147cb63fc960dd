"""The authoring API: a :class:`Plugin` collects what a plugin contributes.

Each contributed function's signature becomes a msgspec struct, so arguments are validated
(and a JSON Schema derived) before plugin code runs, and a bad call names the offending field.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, overload

import msgspec

from cordon.protocol import Contribution, ContributionKind, InvalidParams

__all__ = ["Handler", "Plugin", "PluginDefinitionError", "warm"]

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")

#: What the host passes an event handler, by name: ``handler(ctx, topic=..., payload=...,
#: source=...)``. A handler takes any of them (``ctx`` first, optional) and only gets those.
EVENT_ARGS: Final = ("topic", "payload", "source")
_EVENT_TYPES: Final[dict[str, Any]] = {"topic": str, "payload": Any, "source": str}


class PluginDefinitionError(TypeError):
    """A plugin declared something cordon cannot serve (bad name, ``*args``, duplicate...)."""


@dataclass(slots=True)
class Handler:
    kind: ContributionKind
    name: str
    fn: Callable[..., Any]
    description: str
    params_type: type[msgspec.Struct]
    param_names: tuple[str, ...]
    wants_ctx: bool
    is_async: bool
    options: dict[str, Any] = field(default_factory=dict)
    #: Built once, when the function is registered (that build is also the check that its
    #: parameters can be described), and reused by every :meth:`contribution`.
    params_schema: dict[str, Any] = field(default_factory=dict)
    result_schema: dict[str, Any] = field(default_factory=dict)
    #: Named arguments (an object) or positional ones (an array), in one pass: a decoder
    #: made once per handler, not the type lookup ``msgspec.json.decode(type=...)`` does
    #: per call.
    _decoder: msgspec.json.Decoder[Any] = field(init=False, repr=False)
    #: The name of the asyncio task each call runs in.
    task: str = field(init=False, repr=False)
    #: For an event handler taking only some of :data:`EVENT_ARGS`: the ones it takes.
    passes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self._decoder = msgspec.json.Decoder(self.params_type | list[Any])
        self.task = f"cordon {self.kind} {self.name}"

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
        try:
            value = self._decoder.decode(raw or b"{}")
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
    if annotation is inspect.Signature.empty or annotation is None:
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
    if not callable(fn):
        raise PluginDefinitionError(f"@{kind} needs a function, got {fn!r}")
    handler_name = name or fn.__name__
    if not _NAME.fullmatch(handler_name):
        raise PluginDefinitionError(f"{kind} name {handler_name!r} is not a valid name")
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise PluginDefinitionError(
            f"{kind} {handler_name!r}: cannot resolve type hints: {exc}"
        ) from exc
    params = list(sig.parameters.values())
    wants_ctx = bool(params) and params[0].name == "ctx"
    if wants_ctx:
        params = params[1:]
    passes: tuple[str, ...] | None = None
    if kind == "event_handler":
        passes = _check_event_handler(handler_name, params, hints)
        if passes == EVENT_ARGS:
            passes = None
        # Decoded as the host sends them; the handler gets the ones it named.
        params = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=_EVENT_TYPES[n])
            for n in EVENT_ARGS
        ]
        hints = dict(_EVENT_TYPES)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    names: list[str] = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise PluginDefinitionError(
                f"{kind} {handler_name!r}: *args/**kwargs cannot be described as parameters"
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise PluginDefinitionError(
                f"{kind} {handler_name!r}: positional-only parameter {p.name!r} is not supported"
            )
        annotation = hints.get(p.name, Any)
        if annotation is object:
            # "anything" as people write it; msgspec knows it as Any.
            annotation = Any
        if p.default is p.empty:
            fields.append((p.name, annotation))
        else:
            fields.append((p.name, annotation, p.default))
        names.append(p.name)
    try:
        params_type = msgspec.defstruct(
            f"{handler_name.replace('.', '_').replace('-', '_')}_params",
            fields,
            kw_only=True,
            forbid_unknown_fields=True,
        )
        params_schema = _simple_object_schema(fields) or _object_schema(params_type)
    except (TypeError, ValueError) as exc:
        raise PluginDefinitionError(
            f"{kind} {handler_name!r}: parameter types cannot be validated: {exc}"
        ) from exc
    doc = description if description is not None else inspect.getdoc(fn) or ""
    return Handler(
        kind=kind,
        name=handler_name,
        fn=fn,
        description=doc.strip(),
        params_type=params_type,
        param_names=tuple(names),
        wants_ctx=wants_ctx,
        is_async=inspect.iscoroutinefunction(fn),
        options=options,
        params_schema=params_schema,
        result_schema=_result_schema(hints.get("return", inspect.Signature.empty)),
        passes=passes,
    )


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


def warm() -> None:
    """Pay the first-use costs of describing a tool once, in the zygote before it forks:
    msgspec's schema code compiles a regular expression and fills type caches on its first
    schema, ~0.7 ms of every forked worker's plugin import otherwise. Only cordon's own
    stand-in function is described; nothing of it is kept."""
    _build_handler("tool", _warm_sample, None, None, {}).contribution()


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
