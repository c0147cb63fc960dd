"""Plugin manifests: a valid one, each kind of error, all errors together, requirements."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from cordon.runtime._errors import ConfigError, ManifestError
from cordon.runtime._settings._contributes import (
    Contributes,
    EventDecl,
    MiddlewareDecl,
    Tool,
    UIElement,
)
from cordon.runtime._settings._manifest import (
    MAX_MANIFEST_BYTES,
    Author,
    Manifest,
    check_cordon_compat,
    load_manifest,
    parse_manifest,
    translate_requirement,
)

ROOT = Path(__file__).resolve().parent.parent
ID_RULE = "(lower-case letter, then up to 63 lower-case letters, digits, _ or -)"
ENTRY_RULE = '(expected module:attribute, like "hello_plugin:plugin")'
KNOWN = (
    "(known: log, storage, storage:shared, config, events:emit:<topic>, "
    "events:subscribe:<topic>, exec:<command>, http:<origin>)"
)

FULL = """\
[plugin]
id = "hello"
name = "Hello"
version = "1.0.0"
description = "Greets people"
entry = "hello_plugin:plugin"
authors = [{ name = "Ada Lovelace", email = "ada@example.org" }, "Charles Babbage"]
keywords = ["demo", "greeting"]
license = "MIT"
homepage = "https://example.org/hello"
requires-cordon = "^0.1"
protocol = 1
permissions = ["log", "storage", "events:emit:greet.*", "exec:git"]
activate = "eager"

[plugin.requires]
base = "^1.0"
other = ">=2, <3"

[contributes]
commands = [{ name = "hello.reload", description = "Reload greetings" }]
providers = [{ name = "greeter", description = "Provides greetings" }]
middleware = [{ name = "audit", description = "Audits calls", priority = 10 }]
events = [{ topic = "greet.done", description = "A greeting was sent" }]
ui = [
  { id = "hello-panel", kind = "panel", title = "Hello", command = "hello.reload", icon = "wave" },
]

[[contributes.tools]]
name = "greet"
description = "Greet someone"
params = { type = "object", properties = { name = { type = "string" } } }

[[contributes.tools]]
name = "echo"
"""


def make_plugin(
    tmp_path: Path, text: str, *, module: str | None = "hello_plugin", name: str = "p"
) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "plugin.toml").write_text(text, encoding="utf-8")
    if module is not None:
        (folder / f"{module}.py").write_text("plugin = None\n", encoding="utf-8")
    return folder


def minimal(**plugin: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "hello",
        "name": "Hello",
        "version": "1.0.0",
        "entry": "hello_plugin:plugin",
    }
    base.update({k.replace("_", "-"): v for k, v in plugin.items()})
    return {"plugin": base}


def problems_of(data: dict[str, Any], directory: Path | None = None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, directory=directory, source="plugin.toml")
    return [str(p) for p in info.value.fields()["problems"]]


# -- a valid manifest ---------------------------------------------------------------------------


def test_a_full_manifest_loads_into_typed_fields(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, FULL)
    m = load_manifest(folder)

    assert (m.id, m.name, m.version, m.description) == ("hello", "Hello", "1.0.0", "Greets people")
    assert m.parsed_version == Version("1.0.0")
    assert (m.entry_module, m.entry_attr, m.entry) == (
        "hello_plugin",
        "plugin",
        "hello_plugin:plugin",
    )
    assert m.directory == str(folder.resolve())
    assert os.path.isabs(m.directory)
    assert m.source == str(folder.resolve() / "plugin.toml")
    assert m.authors == (
        Author(name="Ada Lovelace", email="ada@example.org"),
        Author(name="Charles Babbage"),
    )
    assert m.keywords == ("demo", "greeting")
    assert (m.license, m.homepage, m.protocol, m.activate) == (
        "MIT",
        "https://example.org/hello",
        1,
        "eager",
    )
    assert SpecifierSet(m.requires_cordon) == SpecifierSet(">=0.1,<0.2")
    assert {k: SpecifierSet(v) for k, v in m.requires.items()} == {
        "base": SpecifierSet(">=1.0,<2"),
        "other": SpecifierSet(">=2,<3"),
    }
    assert m.permissions == ("log", "storage", "events:emit:greet.*", "exec:git")
    c = m.contributes
    assert c.tools[0] == Tool(
        name="greet",
        description="Greet someone",
        params={"type": "object", "properties": {"name": {"type": "string"}}},
    )
    assert c.tools[1] == Tool(name="echo")
    assert [x.name for x in c.commands] == ["hello.reload"]
    assert [x.name for x in c.providers] == ["greeter"]
    assert c.middleware == (MiddlewareDecl(name="audit", description="Audits calls", priority=10),)
    assert c.events == (EventDecl(topic="greet.done", description="A greeting was sent"),)
    assert c.ui == (
        UIElement(
            id="hello-panel",
            kind="panel",
            title="Hello",
            command="hello.reload",
            extra={"icon": "wave"},
        ),
    )


def test_a_minimal_manifest_needs_only_id_name_version_and_entry(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "")
    m = parse_manifest(minimal(), directory=folder)
    assert m == Manifest(
        id="hello",
        name="Hello",
        version="1.0.0",
        description="",
        entry_module="hello_plugin",
        entry_attr="plugin",
        directory=str(folder.resolve()),
    )
    assert m.contributes == Contributes()
    assert (m.requires_cordon, m.permissions, m.activate, m.protocol) == ("", (), None, None)


def test_an_entry_module_may_be_a_package_in_the_plugin_directory(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "", module=None)
    (folder / "pkg" / "sub").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "sub" / "__init__.py").write_text("plugin = 1\n")
    m = parse_manifest(minimal(entry="pkg.sub:plugin"), directory=folder)
    assert (m.entry_module, m.entry_attr) == ("pkg.sub", "plugin")


def test_the_example_plugins_manifests_are_valid() -> None:
    for folder in sorted((ROOT / "examples" / "plugins").iterdir()):
        if (folder / "plugin.toml").exists():
            assert load_manifest(folder).id == folder.name


def test_loading_a_manifest_imports_nothing_from_the_plugin(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, FULL.replace("hello_plugin", "booby_trap"), module=None)
    (folder / "booby_trap.py").write_text("raise SystemExit('imported!')\n")
    load_manifest(folder)
    assert "booby_trap" not in sys.modules


# -- each kind of error ---------------------------------------------------------------------------


def test_a_directory_without_plugin_toml_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"plugin\.toml does not exist") as info:
        load_manifest(tmp_path)
    assert info.value.fields()["source"] == str(tmp_path.resolve() / "plugin.toml")


def test_a_path_that_is_not_a_directory_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="is not a directory"):
        load_manifest(tmp_path / "nope")


def test_a_manifest_error_is_also_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_manifest(tmp_path)


def test_a_toml_syntax_error_is_a_manifest_error_with_line_and_column(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, '[plugin]\nid = "hello"\nname = \n')
    with pytest.raises(ManifestError) as info:
        load_manifest(folder)
    (problem,) = info.value.fields()["problems"]
    assert problem["message"].startswith("invalid TOML: ")
    assert "line 3, column" in problem["message"]


def test_an_oversized_manifest_is_refused_before_parsing(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, '[plugin]\ndescription = "' + "x" * MAX_MANIFEST_BYTES + '"\n')
    with pytest.raises(ManifestError, match="is larger than"):
        load_manifest(folder)


def test_a_plugin_toml_that_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    os.mkfifo(folder / "plugin.toml")  # reading a FIFO would block the host forever
    with pytest.raises(ManifestError, match="is not a regular file"):
        load_manifest(folder)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"plugin": {**minimal()["plugin"], "descripton": "x"}},
            'plugin.descripton: unknown key (did you mean "description"?)',
        ),
        (
            {**minimal(), "contributes": {"tool": []}},
            'contributes.tool: unknown key (did you mean "tools"?)',
        ),
        ({**minimal(), "contribute": {}}, 'contribute: unknown key (did you mean "contributes"?)'),
        (
            {**minimal(), "contributes": {"tools": [{"name": "a", "descripion": ""}]}},
            'contributes.tools[0].descripion: unknown key (did you mean "description"?)',
        ),
        (
            minimal(authors=[{"name": "A", "emial": "a@b.c"}]),
            'plugin.authors[0].emial: unknown key (did you mean "email"?)',
        ),
    ],
)
def test_an_unknown_key_is_an_error_with_a_did_you_mean(
    data: dict[str, Any], expected: str
) -> None:
    assert problems_of(data) == [expected]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "plugin: missing (required): a [plugin] table with id, name, version and entry"),
        ({"plugin": 3}, "plugin: expected a table, got 3"),
        (
            {"plugin": {"name": "x", "version": "1", "entry": "m:a"}},
            "plugin.id: missing (required)",
        ),
        (minimal(id="Hello World"), 'plugin.id: "Hello World" is not a plugin id ' + ID_RULE),
        (minimal(id="a" * 65), 'plugin.id: "' + "a" * 55 + '…" is not a plugin id ' + ID_RULE),
        (minimal(id="hello\n"), 'plugin.id: "hello\\n" is not a plugin id ' + ID_RULE),
        (minimal(name=""), "plugin.name: must not be empty"),
        (minimal(name=5), "plugin.name: expected a string, got 5"),
        (minimal(version="one"), 'plugin.version: "one" is not a PEP 440 version'),
        (minimal(version=1.0), "plugin.version: expected a string, got 1.0"),
        (
            minimal(entry="hello_plugin"),
            'plugin.entry: "hello_plugin" is not an entry point ' + ENTRY_RULE,
        ),
        (
            minimal(entry="../evil:plugin"),
            'plugin.entry: "../evil:plugin" is not an entry point ' + ENTRY_RULE,
        ),
        (minimal(entry="mod:a.b"), 'plugin.entry: "mod:a.b" is not an entry point ' + ENTRY_RULE),
        (
            minimal(entry="class:plugin"),
            'plugin.entry: "class:plugin" is not an entry point ' + ENTRY_RULE,
        ),
        (
            minimal(permissions=["log", "storage", "net"]),
            "plugin.permissions[2]: unknown permission 'net' " + KNOWN,
        ),
        (
            minimal(permissions=["log", "log"]),
            'plugin.permissions[1]: duplicate of plugin.permissions[0] ("log")',
        ),
        (
            minimal(permissions=["exec:/bin/sh"]),
            "plugin.permissions[0]: 'exec:/bin/sh': '/bin/sh' is not a command name "
            "(no path, no spaces)",
        ),
        (minimal(permissions="log"), 'plugin.permissions: expected an array, got "log"'),
        (
            minimal(requires_cordon="1.2"),
            'plugin.requires-cordon: "1.2" is not a version requirement '
            '(did you mean ">=1.2", "==1.2" or "^1.2"?)',
        ),
        (
            minimal(requires_cordon="^x"),
            'plugin.requires-cordon: "^x" is not a version requirement: '
            "^ needs a release number like 1, 1.2 or 1.2.3",
        ),
        (
            minimal(requires_cordon=1),
            'plugin.requires-cordon: expected a version requirement like ">=1.0" or "^1.0", got 1',
        ),
        (
            minimal(requires={"Base": "^1"}),
            'plugin.requires.Base: "Base" is not a plugin id ' + ID_RULE,
        ),
        (
            minimal(requires={"hello": "^1"}),
            "plugin.requires.hello: a plugin cannot require itself",
        ),
        (
            minimal(requires={"base": ">>1"}),
            'plugin.requires.base: ">>1" is not a version requirement',
        ),
        (minimal(activate="now"), 'plugin.activate: "now" is not one of "lazy", "eager"'),
        (minimal(protocol=0), "plugin.protocol: must be at least 1, got 0"),
        (minimal(protocol="1"), 'plugin.protocol: expected an integer, got "1"'),
        (
            minimal(homepage="javascript:alert(1)"),
            'plugin.homepage: "javascript:alert(1)" is not an http(s) URL',
        ),
        (minimal(authors=[{"email": "a@b.c"}]), "plugin.authors[0].name: missing (required)"),
        (
            minimal(authors=[{"name": "A", "email": "nope"}]),
            'plugin.authors[0].email: "nope" is not an email address',
        ),
        (minimal(authors=[3]), "plugin.authors[0]: expected a table, got 3"),
        (minimal(keywords=["ok", 3]), "plugin.keywords[1]: expected a string, got 3"),
    ],
)
def test_each_kind_of_manifest_error_names_its_field(data: dict[str, Any], expected: str) -> None:
    assert problems_of(data) == [expected]


@pytest.mark.parametrize(
    ("contributes", "expected"),
    [
        ({"tools": {"name": "x"}}, 'contributes.tools: expected an array, got {"name": "x"}'),
        ({"tools": ["greet"]}, 'contributes.tools[0]: expected a table, got "greet"'),
        ({"tools": [{"description": "x"}]}, "contributes.tools[0].name: missing (required)"),
        (
            {"tools": [{"name": "bad name"}]},
            'contributes.tools[0].name: "bad name" is not a valid name',
        ),
        (
            {"tools": [{"name": "a"}, {"name": "a"}]},
            'contributes.tools[1].name: duplicate of contributes.tools[0] ("a")',
        ),
        (
            {"tools": [{"name": "a", "params": "object"}]},
            'contributes.tools[0].params: expected a table, got "object"',
        ),
        (
            {"commands": [{"name": "c", "description": 5}]},
            "contributes.commands[0].description: expected a string, got 5",
        ),
        (
            {"middleware": [{"name": "m", "priority": "high"}]},
            'contributes.middleware[0].priority: expected an integer, got "high"',
        ),
        (
            {"events": [{"topic": "has space"}]},
            'contributes.events[0].topic: "has space" is not a valid topic',
        ),
        (
            {"ui": [{"id": "u", "kind": "pane", "title": "T"}]},
            'contributes.ui[0].kind: "pane" is not one of "panel", "status-item", "menu-item", '
            '"view" (did you mean "panel"?)',
        ),
        ({"ui": [{"id": "u", "kind": "view"}]}, "contributes.ui[0].title: missing (required)"),
        (
            {"ui": [{"id": "u", "kind": "view", "title": "T", "command": "rm -rf"}]},
            'contributes.ui[0].command: "rm -rf" is not a command name',
        ),
    ],
)
def test_each_kind_of_contribution_error_names_its_field(
    contributes: dict[str, Any], expected: str
) -> None:
    assert problems_of({**minimal(), "contributes": contributes}) == [expected]


def test_an_entry_module_missing_from_the_plugin_directory_is_an_error(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "", module="other")
    assert problems_of(minimal(entry="hello_plugin:plugin"), folder) == [
        'plugin.entry: module "hello_plugin" not found in the plugin directory '
        "(looked for hello_plugin.py and hello_plugin/__init__.py)"
    ]


def test_every_problem_in_a_manifest_is_reported_together(tmp_path: Path) -> None:
    folder = make_plugin(
        tmp_path,
        """\
[plugin]
id = "Bad"
name = "x"
version = "one"
entry = "missing:plugin"
permissions = ["log", "storage", "net"]
descripton = "typo"

[contributes]
tools = [{ name = "a" }, { name = "a" }]
""",
        module=None,
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(folder)
    problems = [str(p) for p in info.value.fields()["problems"]]
    assert len(problems) == 6
    assert {p.split(":", 1)[0] for p in problems} == {
        "plugin.descripton",
        "plugin.id",
        "plugin.version",
        "plugin.entry",
        "plugin.permissions[2]",
        "contributes.tools[1].name",
    }
    assert 'plugin.version: "one" is not a PEP 440 version' in problems
    message = str(info.value)
    assert message.startswith(f"6 problem(s) with the manifest in {folder.resolve()}")


# -- requirements ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("^1.2", ">=1.2,<2"),
        ("^1.2.3", ">=1.2.3,<2"),
        ("^1", ">=1,<2"),
        ("^0.2", ">=0.2,<0.3"),
        ("^0.2.3", ">=0.2.3,<0.3"),
        ("^0.0.3", ">=0.0.3,<0.0.4"),
        ("^0.0", ">=0.0,<0.1"),
        ("^0", ">=0,<1"),
        ("~1.2", ">=1.2,<1.3"),
        ("~1.2.3", ">=1.2.3,<1.3"),
        ("~1", ">=1,<2"),
        ("~0.2.3", ">=0.2.3,<0.3"),
        ("^ 1.2", ">=1.2,<2"),
        ("^v1.2", ">=1.2,<2"),
        ("^1.2, !=1.5", ">=1.2,<2,!=1.5"),
        (">=0.1", ">=0.1"),
        (">=1, <3", ">=1,<3"),
        ("~=1.2", "~=1.2"),
        ("==1.*", "==1.*"),
        ("", ""),
        ("*", ""),
    ],
)
def test_npm_style_requirements_translate_to_pep_440(text: str, expected: str) -> None:
    assert translate_requirement(text) == SpecifierSet(expected)


@pytest.mark.parametrize(
    ("text", "versions_in", "versions_out"),
    [
        ("^1.2", ["1.2", "1.2.9", "1.9"], ["1.1.9", "2.0", "2.0.0rc1"]),
        ("^0.2", ["0.2.0", "0.2.9"], ["0.3", "0.1.9", "1.0"]),
        ("~1.2.3", ["1.2.3", "1.2.99"], ["1.2.2", "1.3.0"]),
    ],
)
def test_a_translated_requirement_admits_exactly_the_npm_range(
    text: str, versions_in: list[str], versions_out: list[str]
) -> None:
    spec = translate_requirement(text)
    assert all(spec.contains(v) for v in versions_in)
    assert not any(spec.contains(v, prereleases=True) for v in versions_out)


@pytest.mark.parametrize(
    "text", ["1.2", "^", "^1.2.3.4", "^1.x", "~>1.2", ">=1,", "latest", "^1.2a1"]
)
def test_a_requirement_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a version requirement"):
        translate_requirement(text)


def manifest_requiring(spec: str) -> Manifest:
    return parse_manifest(minimal(requires_cordon=spec), directory=None, source="x/plugin.toml")


def test_a_compatible_cordon_version_passes_the_compat_check() -> None:
    check_cordon_compat(manifest_requiring(">=0.1"), "0.1.0")
    check_cordon_compat(manifest_requiring("^0.1"), "0.1.7")
    check_cordon_compat(manifest_requiring(""), "0.0.1")


def test_a_development_build_of_cordon_counts_as_its_version() -> None:
    check_cordon_compat(manifest_requiring("^0.2"), "0.2.1.dev3")


def test_an_incompatible_cordon_version_names_the_specifier_and_the_running_version() -> None:
    with pytest.raises(ManifestError) as info:
        check_cordon_compat(manifest_requiring("^0.2"), "0.1.0")
    (problem,) = info.value.fields()["problems"]
    assert problem["path"] == "plugin.requires-cordon"
    assert "<0.3,>=0.2" in problem["message"]
    assert "0.1.0" in problem["message"]
    assert "'hello'" in problem["message"]
    assert info.value.fields()["source"] == "x/plugin.toml"


def test_manifest_errors_cap_how_much_of_an_untrusted_value_they_repeat() -> None:
    (problem,) = problems_of(minimal(version="x" * 10_000))
    assert len(problem) < 200
