"""The wire protocol on its own: the JSON-RPC 2.0 spec's examples, framing, errors, versions."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from cordon import protocol as p
from cordon.protocol import (
    OVERSIZE,
    Batch,
    CordonError,
    ErrorObject,
    FrameSplitter,
    Invalid,
    Notification,
    Request,
    Response,
    decode_frame,
    error_from_wire,
    error_to_wire,
)


def _error_code(item: Any) -> int:
    assert isinstance(item, Invalid)
    return item.error.code


# -- the specification's own examples (jsonrpc.org/specification, section 7) ------------------


def test_spec_request_with_positional_params_decodes_as_request() -> None:
    msg = decode_frame(b'{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}')
    assert isinstance(msg, Request)
    assert (msg.id, msg.method) == (1, "subtract")
    assert p.decode_params(msg.params) == [42, 23]


def test_spec_request_with_named_params_and_string_id_decodes() -> None:
    msg = decode_frame(
        b'{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, '
        b'"minuend": 42}, "id": "abc"}'
    )
    assert isinstance(msg, Request)
    assert msg.id == "abc"
    assert p.decode_params(msg.params) == {"subtrahend": 23, "minuend": 42}


def test_spec_request_with_null_id_is_a_request_not_a_notification() -> None:
    msg = decode_frame(b'{"jsonrpc": "2.0", "method": "x", "id": null}')
    assert isinstance(msg, Request)
    assert msg.id is None


def test_spec_notification_has_no_id() -> None:
    msg = decode_frame(b'{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}')
    assert isinstance(msg, Notification)
    assert msg.method == "update"


def test_spec_invalid_json_is_a_parse_error_with_null_id() -> None:
    msg = decode_frame(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert isinstance(msg, Invalid)
    assert msg.id is None
    assert msg.error.code == -32700


def test_spec_invalid_request_object_is_an_invalid_request() -> None:
    msg = decode_frame(b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert _error_code(msg) == -32600


def test_spec_batch_with_invalid_json_is_one_parse_error() -> None:
    msg = decode_frame(
        b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        b'{"jsonrpc": "2.0", "method"]'
    )
    assert _error_code(msg) == -32700


def test_spec_empty_batch_is_one_invalid_request() -> None:
    assert _error_code(decode_frame(b"[]")) == -32600


def test_spec_batch_of_non_objects_gives_one_invalid_request_each() -> None:
    msg = decode_frame(b"[1,2,3]")
    assert isinstance(msg, Batch)
    assert [_error_code(i) for i in msg.items] == [-32600, -32600, -32600]


def test_spec_mixed_batch_keeps_each_member_kind_in_order() -> None:
    msg = decode_frame(
        b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
        b'{"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},'
        b'{"foo": "boo"},'
        b'{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
        b'{"jsonrpc": "2.0", "method": "get_data", "id": "9"}]'
    )
    assert isinstance(msg, Batch)
    kinds = [type(i).__name__ for i in msg.items]
    assert kinds == ["Request", "Notification", "Request", "Invalid", "Request", "Request"]


def test_params_that_are_not_structured_are_an_invalid_request_keeping_the_id() -> None:
    msg = decode_frame(b'{"jsonrpc": "2.0", "method": "x", "params": "bar", "id": 7}')
    assert isinstance(msg, Invalid)
    assert (msg.id, msg.error.code) == (7, -32600)


def test_wrong_jsonrpc_version_is_an_invalid_request() -> None:
    assert _error_code(decode_frame(b'{"jsonrpc": "1.0", "method": "x", "id": 1}')) == -32600


def test_response_with_both_result_and_error_is_invalid() -> None:
    frame = b'{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}'
    assert _error_code(decode_frame(frame)) == -32600


def test_response_with_null_result_is_a_success() -> None:
    msg = decode_frame(b'{"jsonrpc":"2.0","id":1,"result":null}')
    assert isinstance(msg, Response)
    assert msg.error is None
    assert p.decode_params(msg.result) is None


def test_encoded_messages_round_trip_through_the_decoder() -> None:
    assert isinstance(decode_frame(p.encode_request(5, "m", {"a": 1})), Request)
    assert isinstance(decode_frame(p.encode_notification("n", [1])), Notification)
    ok = decode_frame(p.encode_result("x", [1, 2]))
    assert isinstance(ok, Response)
    assert p.decode_params(ok.result) == [1, 2]
    err = decode_frame(p.encode_error(None, p.ErrorObject(code=-32601, message="nope")))
    assert isinstance(err, Response)
    assert err.error is not None
    assert err.error.code == -32601


# -- framing -----------------------------------------------------------------------------------


def test_splitter_joins_frames_split_across_reads() -> None:
    s = FrameSplitter(64)
    assert s.feed(b'{"a":') == []
    assert s.feed(b"1}\n{") == [b'{"a":1}']
    assert s.feed(b"}\n\n  \n") == [b"{}"]
    assert s.pending == 0


def test_splitter_reports_an_oversize_frame_and_resyncs_at_the_next_newline() -> None:
    s = FrameSplitter(8)
    assert s.feed(b"0123456789") == [OVERSIZE]
    assert s.pending == 0  # nothing of the oversize frame is kept
    assert s.feed(b"more junk") == []
    assert s.feed(b"tail\n{}\n") == [b"{}"]
    assert s.oversize_count == 1


def test_splitter_reports_oversize_complete_lines_in_their_place() -> None:
    s = FrameSplitter(4)
    assert s.feed(b"ab\n0123456789\ncd\n") == [b"ab", OVERSIZE, b"cd"]


def test_splitter_never_holds_more_than_the_limit() -> None:
    s = FrameSplitter(1024)
    for _ in range(1000):
        s.feed(b"x" * 1000)
        assert s.pending <= 1024


def test_splitter_hands_over_a_final_unterminated_frame_at_eof() -> None:
    s = FrameSplitter(64)
    s.feed(b"{}\n[1]")
    assert s.feed_eof() == [b"[1]"]


def _reference_frames(stream: bytes, limit: int) -> list[object]:
    """What a splitter must return for ``stream``, however it is cut into reads: each line
    in order, blank ones skipped, lines over ``limit`` as OVERSIZE, and a final line over
    the limit (no newline yet) reported as OVERSIZE too."""
    *lines, last = stream.split(b"\n")
    out: list[object] = [
        OVERSIZE if len(line) > limit else line
        for line in lines
        if len(line) > limit or (line and not line.isspace())
    ]
    if len(last) > limit:
        out.append(OVERSIZE)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_splitter_gives_the_same_frames_however_the_stream_is_cut_into_reads(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.choice([2, 5, 16, 64])
    pieces = []
    for _ in range(rng.randint(1, 30)):
        size = rng.choice([0, 1, 2, limit - 1, limit, limit + 1, 3 * limit])
        pieces.append(bytes(rng.choice(b"ab {} ") for _ in range(max(size, 0))))
    stream = b"\n".join(pieces) + rng.choice([b"", b"\n"])
    s = FrameSplitter(limit)
    got: list[object] = []
    at = 0
    while at < len(stream):
        step = rng.choice([1, 2, 3, limit, 2 * limit + 1, 1000])
        got += s.feed(stream[at : at + step])
        at += step
        assert s.pending <= limit
    assert got == _reference_frames(stream, limit)


def test_splitter_assembles_a_frame_of_exactly_the_limit_from_one_byte_reads() -> None:
    s = FrameSplitter(1000)
    frame = b'"' + b"x" * 998 + b'"'
    for byte in frame:
        assert s.feed(bytes([byte])) == []
    assert s.pending == 1000
    assert s.feed(b"\n") == [frame]
    assert s.feed(b"x\n") == [b"x"]


def test_splitter_reports_a_frame_that_outgrows_the_limit_across_reads_once() -> None:
    s = FrameSplitter(10)
    assert s.feed(b"01234") == []
    assert s.feed(b"56789") == []
    assert s.feed(b"A") == [OVERSIZE]
    assert s.pending == 0
    assert s.feed(b"BCD\nok\n") == [b"ok"]
    assert s.oversize_count == 1


# -- errors ------------------------------------------------------------------------------------

ALL_ERRORS: list[p.CordonError] = [
    p.ParseError("bad json"),
    p.InvalidRequest("bad request"),
    p.MethodNotFound("nope", method="x"),
    p.InvalidParams("bad field", field="name"),
    p.InternalError("oops"),
    p.PluginError(exc_type="ValueError", exc_message="boom", traceback="tb", plugin="a"),
    p.PermissionDenied(permission="storage", plugin="a"),
    p.QuotaExceeded(kind="memory", limit=1024, plugin="a"),
    p.CallTimeout(timeout=1.5, method="greet", plugin="a"),
    p.CallCancelled(method="greet"),
    p.WorkerCrashed(plugin="a", reason="signal", returncode=-9, signal=9, stderr_tail=["x"]),
    p.PluginUnavailable(plugin="a", reason="circuit-breaker-open", last_exit_reasons=["cpu"]),
    p.IncompatibleProtocol(ours=[1], theirs=[2]),
    p.FrameTooLarge(limit=10, size=20),
    p.SandboxUnavailable(plugin="a", missing=["landlock-fs: no ABI"]),
]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_survives_the_wire_with_its_type_and_fields(error: p.CordonError) -> None:
    wire = p.error_to_wire(error)
    encoded = msgspec.json.encode(wire)
    back = p.error_from_wire(msgspec.json.decode(encoded, type=p.ErrorObject))
    assert type(back) is type(error)
    assert back.fields() == error.fields()
    assert back.message == error.message
    assert wire.data["type"] == type(error).__name__


def test_cordon_error_codes_are_in_the_reserved_server_range_and_unique() -> None:
    codes = [type(e).code for e in ALL_ERRORS]
    assert len(codes) == len(set(codes))
    own = [c for c in codes if c > -32600 or c < -32700]
    assert own
    assert all(-32099 <= c <= -32000 for c in own)


def test_unknown_error_codes_are_kept_verbatim() -> None:
    back = p.error_from_wire(p.ErrorObject(code=-1, message="custom", data={"x": 1}))
    assert isinstance(back, p.RemoteError)
    assert back.remote_data == {"x": 1}
    assert p.error_to_wire(back) == p.ErrorObject(code=-1, message="custom", data={"x": 1})


def test_foreign_exceptions_map_to_internal_error() -> None:
    assert p.error_to_wire(KeyError("k")).code == -32603


def test_errors_pickle_with_their_fields() -> None:
    import pickle

    err = p.QuotaExceeded(kind="cpu", limit=5, plugin="z")
    back = pickle.loads(pickle.dumps(err))
    assert back.fields() == err.fields()


# -- versions ----------------------------------------------------------------------------------


def test_negotiation_picks_the_highest_common_version() -> None:
    assert p.negotiate([1, 2, 3], [2, 3, 4]) == 3


def test_negotiation_without_a_common_version_names_both_sides() -> None:
    with pytest.raises(p.IncompatibleProtocol) as info:
        p.negotiate([1], [2, 3])
    assert info.value.ours == [1]
    assert info.value.theirs == [2, 3]
    assert "host speaks [1]" in str(info.value)


def _cordon_error_classes() -> list[type[CordonError]]:
    # Every module that defines errors, imported, so the registry has seen them all.
    import cordon.runtime._cli._control
    import cordon.runtime._cli._scaffold
    import cordon.runtime._supervise._cgroup
    import cordon.worker  # noqa: F401

    seen: list[type[CordonError]] = []
    todo: list[type[CordonError]] = [CordonError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in seen if c.__module__.startswith("cordon.") and "code" in c.__dict__]


def test_no_two_unrelated_error_classes_share_a_wire_code() -> None:
    by_code: dict[int, list[type[CordonError]]] = {}
    for cls in _cordon_error_classes():
        by_code.setdefault(cls.code, []).append(cls)
    for code, classes in by_code.items():
        # Sharing is allowed only down one line of inheritance (InvalidRequest is a
        # ProtocolError; UnknownContribution is a MethodNotFound).
        roots = [c for c in classes if not any(issubclass(c, o) for o in classes if o is not c)]
        assert len(roots) == 1, f"code {code} is declared by unrelated {classes}"


def test_host_side_errors_cross_the_wire_as_themselves_with_their_fields() -> None:
    from cordon.runtime import PluginInUse
    from cordon.runtime._cli._control import HostNotRunning
    from cordon.runtime._platform._registry import AmbiguousContribution
    from cordon.runtime._platform._versions import MissingDependency

    for exc in (
        PluginInUse(plugin="base", dependents=["a", "b"]),
        HostNotRunning(socket="/run/x.sock", reason="refused"),
        AmbiguousContribution(kind="tool", name="list", candidates=["a.list", "b.list"]),
        MissingDependency(plugin="a", dependency="base", required=">=1"),
    ):
        back = error_from_wire(
            msgspec.json.decode(msgspec.json.encode(error_to_wire(exc)), type=ErrorObject)
        )
        assert type(back) is type(exc)
        assert back.fields() == exc.fields()
        assert back.message == exc.message


def test_a_frame_body_is_the_frame_without_its_newline_and_fails_as_the_frame_does() -> None:
    from cordon.protocol._messages import (
        encode_request_body,
        encode_result_body,
        encode_result_body_into,
    )

    for value in ("x" * 100_000, {"a": [1, None, "é"]}, None):
        assert encode_result_body(9, value) + b"\n" == p.encode_result(9, value)
        assert encode_result_body_into(9, value) == encode_result_body(9, value)
        params = {"arguments": value}
        assert encode_request_body(4, "invoke", params) + b"\n" == p.encode_request(
            4, "invoke", params
        )
    for bad in (["y" * 100_000, object()], {"z": [1, 2, 1j]}, {"a": 1, 1j: 2}):
        with pytest.raises((TypeError, msgspec.EncodeError, OverflowError)):
            p.encode_result(9, bad)
        with pytest.raises((TypeError, msgspec.EncodeError, OverflowError)):
            encode_result_body(9, bad)
        with pytest.raises((TypeError, msgspec.EncodeError, OverflowError)):
            encode_result_body_into(9, bad)
        with pytest.raises((TypeError, msgspec.EncodeError, OverflowError)):
            encode_request_body(9, "invoke", bad)
