"""JSON-RPC 2.0 messages as msgspec structs, and the classification of incoming frames.

Incoming frames are decoded once into :class:`Message` (every member optional), then classified
as a request, notification or response. ``params`` and ``result`` stay :class:`msgspec.Raw` so
the receiver decodes them straight into the type it expects (a tool's parameter struct, say)
and a validation error can name the field.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ._errors import ErrorObject, InvalidRequest, ParseError

__all__ = [
    "JSONRPC",
    "Batch",
    "Incoming",
    "Invalid",
    "Message",
    "Notification",
    "Request",
    "Response",
    "decode_frame",
    "decode_request",
    "decode_success",
    "encode",
    "encode_error",
    "encode_notification",
    "encode_request",
    "encode_request_body",
    "encode_result",
    "encode_result_body",
    "encode_result_body_into",
]

JSONRPC: Final = "2.0"
Id = int | str | None


class Message(msgspec.Struct, omit_defaults=True):
    """Any JSON-RPC 2.0 object; which members are present says what it is."""

    jsonrpc: Literal["2.0"]
    id: int | str | UnsetType | None = UNSET
    method: str | UnsetType = UNSET
    params: msgspec.Raw = msgspec.Raw()
    result: msgspec.Raw = msgspec.Raw()
    error: ErrorObject | UnsetType = UNSET


class Request(msgspec.Struct, frozen=True):
    id: Id
    method: str
    params: msgspec.Raw


class Notification(msgspec.Struct, frozen=True):
    method: str
    params: msgspec.Raw


class Response(msgspec.Struct, frozen=True):
    id: Id
    result: msgspec.Raw
    error: ErrorObject | None


class Invalid(msgspec.Struct, frozen=True):
    """A member of the input that is not a valid JSON-RPC object; answer it with ``error``."""

    id: Id
    error: ErrorObject


Incoming = Request | Notification | Response | Invalid


class Batch(msgspec.Struct, frozen=True):
    items: list[Incoming]


# -- encoding ---------------------------------------------------------------------------------


class _OutRequest(msgspec.Struct, omit_defaults=True):
    jsonrpc: str
    id: Id
    method: str
    params: Any = None


class _OutNotification(msgspec.Struct, omit_defaults=True):
    jsonrpc: str
    method: str
    params: Any = None


class _OutResult(msgspec.Struct):
    jsonrpc: str
    id: Id
    result: Any


class _OutError(msgspec.Struct):
    jsonrpc: str
    id: Id
    error: ErrorObject


_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)
_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_any_decoder = msgspec.json.Decoder()

_NL = b"\n"


def encode(obj: Any) -> bytes:
    """Encode one JSON value as a frame (with its terminating newline)."""
    return _encoder.encode(obj) + _NL


def encode_request(id: Id, method: str, params: Any = None) -> bytes:
    return _encoder.encode(_OutRequest(JSONRPC, id, method, params)) + _NL


def encode_notification(method: str, params: Any = None) -> bytes:
    return _encoder.encode(_OutNotification(JSONRPC, method, params)) + _NL


def encode_result(id: Id, result: Any) -> bytes:
    """Encode a success response. Raises ``TypeError``/``msgspec.EncodeError`` when ``result``
    is not JSON-encodable; the caller answers with an error instead."""
    return _encoder.encode(_OutResult(JSONRPC, id, result)) + _NL


def encode_request_body(id: Id, method: str, params: Any = None) -> bytes:
    """:func:`encode_request` without its newline, for a writer that adds it itself: a large
    frame is then not copied to add one (45 us a MiB), and a small one costs less too (a
    ``bytearray`` to encode into cost ~30 % more per small frame than this, measured in
    instructions)."""
    return _encoder.encode(_OutRequest(JSONRPC, id, method, params))


#: Results encoded to ``bytes`` (see :func:`encode_result_body`): too small for a failed
#: allocation growing their frame to be likely.
_SMALL: Final = frozenset({type(None), bool, int, float})
_SHORT: Final = 4096


def encode_result_body(id: Id, result: Any) -> bytes | bytearray:
    """:func:`encode_result` without its newline (see :func:`encode_request_body`). Raises
    as ``encode_result`` does, and ``MemoryError`` when the frame does not fit in memory.

    A result that may be large (anything but a scalar or a short string) is encoded into a
    ``bytearray`` (:func:`encode_result_body_into`): when growing its output fails (a
    worker's RLIMIT_AS reached), msgspec's ``bytes`` encoder dereferences the buffer
    ``_PyBytes_Resize`` freed, and the process dies of SIGSEGV (msgspec 0.22-0.23, tested in
    tests/test_worker_reliability.py), where a ``bytearray`` encode raises ``MemoryError``.
    Small results keep the cheaper ``bytes`` path (~30 % fewer instructions a frame)."""
    if type(result) in _SMALL or (type(result) is str and len(result) < _SHORT):
        return _encoder.encode(_OutResult(JSONRPC, id, result))
    return encode_result_body_into(id, result)


def encode_result_body_into(id: Id, result: Any) -> bytearray:
    """:func:`encode_result_body`'s path for a result that may be large."""
    out = bytearray()
    _encoder.encode_into(_OutResult(JSONRPC, id, result), out)
    return out


def encode_error(id: Id, error: ErrorObject) -> bytes:
    return _encoder.encode(_OutError(JSONRPC, id, error)) + _NL


# -- decoding ---------------------------------------------------------------------------------


def _invalid(message: str) -> Invalid:
    return Invalid(
        id=None,
        error=ErrorObject(
            code=InvalidRequest.code, message=message, data={"type": "InvalidRequest"}
        ),
    )


def _classify(msg: Message) -> Incoming:
    id_present = msg.id is not UNSET
    ident: Id = None if isinstance(msg.id, UnsetType) else msg.id
    if not isinstance(msg.method, UnsetType):
        if msg.result or not isinstance(msg.error, UnsetType):
            return _invalid("Invalid Request: a request cannot carry 'result' or 'error'")
        if msg.params and bytes(memoryview(msg.params)[:1]) not in (b"{", b"["):
            return Invalid(
                id=ident,
                error=ErrorObject(
                    code=InvalidRequest.code,
                    message="Invalid Request: 'params' must be an object or an array",
                    data={"type": "InvalidRequest"},
                ),
            )
        if id_present:
            return Request(ident, msg.method, msg.params)
        return Notification(msg.method, msg.params)
    has_error = not isinstance(msg.error, UnsetType)
    if not id_present or bool(msg.result) == has_error:
        return _invalid("Invalid Request: not a request, notification or response")
    return Response(ident, msg.result, msg.error if has_error else None)  # type: ignore[arg-type]


def _decode_one(raw: bytes | msgspec.Raw) -> Incoming:
    try:
        return _classify(_message_decoder.decode(raw))
    except msgspec.ValidationError as exc:
        # msgspec stops at the first problem, which may be a type mismatch in front of
        # malformed JSON; the spec wants a parse error for anything that is not JSON at all.
        _any_decoder.decode(raw)
        return _invalid(f"Invalid Request: {exc}")


def decode_frame(frame: bytes) -> Incoming | Batch:
    """Decode one frame. Never raises: malformed input becomes :class:`Invalid` items that
    carry the spec's error (-32700 parse error, -32600 invalid request)."""
    stripped = frame.lstrip()
    if stripped[:1] == b"[":
        try:
            members = _batch_decoder.decode(stripped)
        except msgspec.DecodeError as exc:
            return _parse_error(exc)
        if not members:
            return _invalid("Invalid Request: empty batch")
        return Batch([_decode_one(m) for m in members])
    try:
        return _decode_one(stripped)
    except msgspec.DecodeError as exc:
        return _parse_error(exc)


class Success(msgspec.Struct, forbid_unknown_fields=True):
    """A success response with an integer id, and nothing else: every answer the host
    expects. Any other member (``error``, ``method``, ``params``...) makes the frame
    something else, which :func:`decode_frame` then classifies as before."""

    jsonrpc: Literal["2.0"]
    id: int
    result: msgspec.Raw


_success_decoder = msgspec.json.Decoder(Success)


def decode_success(frame: bytes) -> Success | None:
    """The fast path for the common frame: a success response, decoded in one narrow pass
    (a quarter of :func:`decode_frame`'s cost). ``None``: it is anything else (or not
    valid); classify it with :func:`decode_frame`."""
    try:
        return _success_decoder.decode(frame)
    except msgspec.DecodeError:
        return None


class _Call(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: Literal["2.0"]
    id: int | str
    method: str
    params: msgspec.Raw = msgspec.Raw()


_call_decoder = msgspec.json.Decoder(_Call)
_PARAMS_OPEN: Final = (b"{"[0], b"["[0])


def decode_request(frame: bytes) -> Request | None:
    """The fast path for the common frame on the worker's side: a request with an id and
    object or array params, in one narrow pass. ``None``: it is anything else (or not
    valid); classify it with :func:`decode_frame`."""
    try:
        call = _call_decoder.decode(frame)
    except msgspec.DecodeError:
        return None
    params = call.params
    if params and memoryview(params)[0] not in _PARAMS_OPEN:
        return None
    return Request(call.id, call.method, params)


def _parse_error(exc: Exception) -> Invalid:
    return Invalid(
        id=None,
        error=ErrorObject(
            code=ParseError.code, message=f"Parse error: {exc}", data={"type": "ParseError"}
        ),
    )


def decode_params(raw: msgspec.Raw, type: Any = Any) -> Any:
    """Decode ``params``/``result`` into ``type`` (absent decodes as ``None``)."""
    if not raw:
        return None
    if type is Any:
        return _any_decoder.decode(raw)
    return msgspec.json.decode(raw, type=type)
