"""The middleware chain across plugins: configured order, reverse order after the handler, and
what a failing or hanging middleware does under fail-open and fail-closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import Runtime
from cordon.runtime._core._routing import MiddlewareFailed

from .conftest import TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

MW_A = TEST_PLUGINS / "mw_a"
MW_B = TEST_PLUGINS / "mw_b"


def config(tmp_path: Path, order: list[str] | None = None, **mw_a: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = base_config(tmp_path)
    if order is not None:
        cfg["runtime"]["middleware-order"] = order
    if mw_a:
        cfg["plugins"] = {"mw_a": {k.replace("_", "-"): v for k, v in mw_a.items()}}
    return cfg


async def test_before_request_runs_in_configured_order_and_after_response_in_reverse(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with Runtime(config(tmp_path, ["mw_b", "mw_a"])) as rt:
            await rt.load(MW_A)
            await rt.load(MW_B)
            assert await rt.invoke("mw_a.trail", {"trail": []}) == [
                "b:before",
                "a:before",
                "handler",
                "a:after",
                "b:after",
            ]


async def test_unlisted_plugins_middleware_runs_after_the_listed_ones_by_id(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with Runtime(config(tmp_path)) as rt:
            await rt.load(MW_B)
            await rt.load(MW_A)
            # No middleware-order: by plugin id.
            assert await rt.invoke("mw_b.trail", {"trail": ["start"]}) == [
                "start",
                "a:before",
                "b:before",
                "handler",
                "b:after",
                "a:after",
            ]


async def test_middleware_workers_start_lazily_on_the_first_routed_call(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with Runtime(config(tmp_path, ["mw_b"])) as rt:
            await rt.load(MW_A)
            await rt.load(MW_B)
            assert rt.get("mw_a").worker is None and rt.get("mw_b").worker is None
            assert await rt.invoke("mw_a.trail", {"trail": []}) == [
                "b:before",
                "a:before",
                "handler",
                "a:after",
                "b:after",
            ]
            phases = {c.name: c.options["phase"] for c in rt.registry.contributions("middleware")}
            assert phases == {
                "a_before": "before_request",
                "a_after": "after_response",
                "b_before": "before_request",
                "b_after": "after_response",
            }


async def test_a_failing_middleware_fails_the_call_under_fail_closed_naming_it(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with Runtime(config(tmp_path, ["mw_b", "mw_a"])) as rt:
            await rt.load(MW_A)
            await rt.load(MW_B)
            with pytest.raises(MiddlewareFailed) as info:
                await rt.invoke("mw_b.trail", {"trail": [], "fail": "a"})
            err = info.value
            assert (err.plugin, err.middleware, err.phase) == ("mw_a", "a_before", "before_request")
            assert "a_before refuses" in (err.reason or "")
            assert "mw_a.a_before" in err.message
            # The chain and the workers are fine afterwards.
            assert await rt.invoke("mw_b.trail", {"trail": []}) == [
                "b:before",
                "a:before",
                "handler",
                "a:after",
                "b:after",
            ]


async def test_a_failing_middleware_is_skipped_under_fail_open(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        cfg = config(tmp_path, ["mw_b", "mw_a"], middleware_policy="fail-open")
        async with Runtime(cfg) as rt:
            await rt.load(MW_A)
            await rt.load(MW_B)
            result = await rt.invoke("mw_b.trail", {"trail": [], "fail": "a"})
            # a_before was skipped; everything else ran.
            assert result == ["b:before", "handler", "a:after", "b:after"]


async def test_a_hanging_middleware_times_out_and_is_skipped_under_fail_open(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        cfg = config(tmp_path, ["mw_a", "mw_b"], middleware_policy="fail-open", call_timeout=0.5)
        async with Runtime(cfg) as rt:
            await rt.load(MW_A)
            await rt.load(MW_B)
            result = await rt.invoke("mw_b.trail", {"trail": [], "fail": "a-hang"})
            assert result == ["b:before", "handler", "b:after", "a:after"]


async def test_a_hanging_middleware_fails_the_call_under_fail_closed(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with Runtime(config(tmp_path, ["mw_a", "mw_b"], call_timeout=0.5)) as rt:
            await rt.load(MW_A)
            await rt.load(MW_B)
            with pytest.raises(MiddlewareFailed) as info:
                await rt.invoke("mw_b.trail", {"trail": [], "fail": "a-hang"})
            assert (info.value.plugin, info.value.middleware) == ("mw_a", "a_before")
            assert (info.value.reason or "").startswith("CallTimeout")


async def test_a_plugins_middleware_wraps_its_own_tools_too(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with Runtime(config(tmp_path)) as rt:
            await rt.load(MW_A)
            assert await rt.invoke("mw_a.trail", {"trail": ["x"]}) == [
                "x",
                "a:before",
                "handler",
                "a:after",
            ]
