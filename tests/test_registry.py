"""The contribution registry: listing without workers, qualified and unique names, clashes,
extension points, lazy activation through routing, and load_all over discovery."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from cordon.runtime import PluginUnavailable, Runtime
from cordon.runtime._core._loading import PluginInUse
from cordon.runtime._platform._registry import AmbiguousContribution, UnknownContribution
from cordon.runtime._platform._versions import BlockedByDependency, MissingDependency

from .conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

TWIN = TEST_PLUGINS / "greet_twin"


async def test_contributions_are_listed_from_the_manifest_without_starting_a_worker(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        await rt.load(hello_dir)
        await rt.load(TWIN)
    assert rt.get("hello").worker is None and rt.get("greet_twin").worker is None
    tools = {(c.plugin, c.name): c for c in rt.registry.contributions("tool")}
    assert set(tools) == {
        ("hello", "greet"),
        ("hello", "echo"),
        ("hello", "slow_count"),
        ("greet_twin", "greet"),
        ("greet_twin", "wave"),
    }
    twin_greet = tools[("greet_twin", "greet")]
    assert twin_greet.description == "Greet someone, twin style."
    assert twin_greet.schema == {"type": "object", "required": ["name"]}
    assert twin_greet.source == "manifest"
    assert [c.qualified_name for c in rt.registry.contributions("provider")] == [
        "greet_twin.suggest"
    ]
    ui = rt.registry.contributions("ui", plugin="greet_twin")
    assert [c.name for c in ui] == ["twin-panel", "twin-broken"]
    assert ui[0].options == {"kind": "panel", "title": "Twin", "point": "sidebar", "icon": "star"}


async def test_the_running_worker_refines_the_listing(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        await rt.load(TWIN)
        assert await rt.call_tool("wave") == "o/"
    greet = rt.registry.get("greet_twin.greet")
    assert greet.source == "worker"
    # The worker's schema is derived from the signature; the description still shows.
    assert greet.schema["required"] == ["name"]
    assert greet.schema["properties"]["name"] == {"type": "string"}
    assert greet.description == "Greet someone, twin style."
    # UI elements are manifest data and stay listed once the worker runs.
    assert len(rt.registry.contributions("ui")) == 2


async def test_routing_starts_a_lazy_worker_on_first_use(rt: Runtime) -> None:
    with anyio.fail_after(30):
        twin = await rt.load(TWIN)
        assert twin.worker is None and twin.state == "discovered"
        assert await rt.call_tool("greet", {"name": "Ada"}) == "Howdy Ada"
        # (read again: the call changed them)
        assert rt.get("greet_twin").worker is not None
        assert rt.get("greet_twin").state == "active"
        assert await rt.call_provider("suggest", {"prefix": "x"}) == ["x-1", "x-2"]


async def test_a_name_two_plugins_offer_is_ambiguous_and_names_both(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        await rt.load(hello_dir)
        await rt.load(TWIN)
        with pytest.raises(AmbiguousContribution) as info:
            await rt.call_tool("greet", {"name": "Ada"})
        assert info.value.candidates == ["greet_twin.greet", "hello.greet"]
        assert "greet_twin.greet" in info.value.message and "hello.greet" in info.value.message
        # No worker was started to find that out.
        assert rt.get("hello").worker is None
        assert await rt.call_tool("hello.greet", {"name": "Ada"}) == "Hello Ada"
        assert await rt.call_tool("greet_twin.greet", {"name": "Ada"}) == "Howdy Ada"
        # A unique name needs no qualification.
        assert await rt.call_tool("wave") == "o/"


async def test_a_disabled_plugin_does_not_make_a_name_ambiguous(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        await rt.load(hello_dir)
        await rt.load(TWIN)
        await rt.disable("greet_twin")
        assert rt.get("greet_twin").state == "disabled"
        assert await rt.call_tool("greet", {"name": "Ada"}) == "Hello Ada"
        with pytest.raises(PluginUnavailable) as info:
            await rt.call_tool("greet_twin.greet", {"name": "Ada"})
        assert info.value.reason == "disabled"
        await rt.enable("greet_twin")
        assert await rt.call_tool("greet_twin.greet", {"name": "Ada"}) == "Howdy Ada"


async def test_an_unknown_name_is_a_typed_error(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        await rt.load(hello_dir)
        with pytest.raises(UnknownContribution) as info:
            await rt.call_tool("nope")
        assert (info.value.kind, info.value.name) == ("tool", "nope")
        # Wrong kind: greet is a tool, not a command.
        with pytest.raises(UnknownContribution):
            await rt.run_command("greet")


async def test_a_qualified_name_routes_to_a_plugin_that_declares_nothing(
    rt: Runtime, probe_dir: Path
) -> None:
    with anyio.fail_after(30):
        await rt.load(probe_dir)
        assert rt.registry.contributions(plugin="probe") == []
        assert await rt.call_tool("probe.add", {"a": 2, "b": 3}) == 5
        # Now the worker told us what it has, so the unqualified name is known.
        assert await rt.call_tool("add", {"a": 1, "b": 1}) == 2


async def test_extension_points_list_contributions_of_their_kind(rt: Runtime) -> None:
    with anyio.fail_after(30):
        await rt.load(TWIN)
    sidebar = rt.registry.declare_extension_point(
        "sidebar",
        "ui",
        {
            "type": "object",
            "required": ["title", "icon"],
            "properties": {"icon": {"type": "string"}},
        },
    )
    rt.registry.declare_extension_point("suggest", "provider", {"type": "array"})
    assert rt.registry.extension_points["sidebar"] is sidebar
    assert [c.qualified_name for c in rt.registry.contributions_to("sidebar")] == [
        "greet_twin.twin-panel"
    ]
    # An element that does not fit the payload schema is left out, with the reason.
    assert rt.registry.problems_with("sidebar") == {
        "greet_twin.twin-broken": ["$.icon: missing (required)"]
    }
    assert [c.qualified_name for c in rt.registry.contributions_to("suggest")] == [
        "greet_twin.suggest"
    ]
    with pytest.raises(ValueError, match="not one of"):
        rt.registry.declare_extension_point("x", "widget", {})


async def test_load_all_loads_in_dependency_order_and_reports_broken_plugins(
    tmp_path: Path,
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copytree(EXAMPLES / "hello", plugins / "hello")
    shutil.copytree(TWIN, plugins / "greet_twin")
    # "zeta" needs hello (present), "needy" needs something absent, "dependent" needs needy.
    for pid, requires in {"zeta": "hello", "needy": "absent", "dependent": "needy"}.items():
        d = plugins / pid
        d.mkdir()
        (d / f"{pid}_plugin.py").write_text("from cordon.worker import Plugin\nplugin = Plugin()\n")
        (d / "plugin.toml").write_text(
            f'[plugin]\nid = "{pid}"\nname = "{pid}"\nversion = "1.0"\n'
            f'entry = "{pid}_plugin:plugin"\n[plugin.requires]\n{requires} = ">=1"\n'
        )
    (plugins / "bad").mkdir()
    (plugins / "bad" / "plugin.toml").write_text("[plugin]\nid = 'Bad!'\n")
    cfg = base_config(tmp_path)
    cfg["runtime"] = {**cfg["runtime"], "plugin-dirs": [str(plugins)]}  # type: ignore[dict-item]
    with anyio.fail_after(30):
        async with Runtime(cfg) as rt:
            report = await rt.load_all(entry_points=False)
            assert report.loaded == ["greet_twin", "hello", "zeta"]
            failed = {f.plugin or Path(f.path or "").name: f for f in report.failed}
            assert set(failed) == {"bad", "needy", "dependent"}
            assert isinstance(failed["needy"].error, MissingDependency)
            assert isinstance(failed["dependent"].error, BlockedByDependency)
            assert "plugin.id" in failed["bad"].reason
            assert set(rt.plugins) == {"greet_twin", "hello", "zeta"}
            # Loading again skips what is loaded and reports the same broken ones.
            again = await rt.load_all(entry_points=False)
            assert again.loaded == [] and sorted(again.skipped) == ["greet_twin", "hello", "zeta"]
            assert len(again.failed) == 3

            # hello is needed by zeta: no silent unload, cascade unloads both.
            with pytest.raises(PluginInUse) as info:
                await rt.unload("hello")
            assert info.value.dependents == ["zeta"]
            assert await rt.unload("hello", cascade=True) == ["zeta", "hello"]
            assert set(rt.plugins) == {"greet_twin"}
