"""A plugin's ``plugin.toml``: who it is, where its code starts, what it asks for and offers.

The host reads the manifest *without importing anything from the plugin*: everything it needs
to list, gate, and wire a plugin (id, version, entry point, requested permissions, declared
contributions) is plain data here, and the plugin's code runs only in its sandboxed worker.

.. code-block:: toml

    [plugin]
    id = "hello"                        # ^[a-z][a-z0-9_-]{0,63}$
    name = "Hello"
    version = "1.0.0"                   # PEP 440
    description = "Greets people"
    entry = "hello_plugin:plugin"       # module:attribute, module file inside the plugin dir
    requires-cordon = ">=0.1"           # PEP 440 specifier, or npm-style "^0.1" / "~0.1"
    permissions = ["log", "storage"]
    dependencies = ["humanize>=4"]      # PEP 508, installed into the plugin's own environment

    [plugin.requires]                   # other plugins: id -> specifier
    base = "^1.0"

    [contributes]
    tools = [{ name = "greet", description = "Greet someone", params = { type = "object" } }]

The file is written by someone we do not trust, so it is size-capped, and every problem is
reported at once in one :class:`ManifestError` under its TOML path. The ``[contributes]``
section (its types and checks) lives in :mod:`._contributes`.
"""

from __future__ import annotations

import keyword
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from cordon.protocol._entry import split_entry_module

from .._errors import ManifestError, Problem
from ._contributes import Contributes, parse_contributes
from ._permissions import check_permission_string
from ._validate import INVALID, PLUGIN_ID, Checker, Invalid, join, read_toml, show

__all__ = [
    "MANIFEST_FILENAME",
    "Author",
    "Contributes",
    "Manifest",
    "check_cordon_compat",
    "load_manifest",
    "parse_manifest",
    "translate_requirement",
]

MANIFEST_FILENAME: Final = "plugin.toml"

#: A manifest is metadata; anything bigger is a mistake or an attack on the host's parser.
MAX_MANIFEST_BYTES: Final = 256 * 1024

_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+")
_URL: Final = re.compile(r"https?://[^\s]+", re.IGNORECASE)


class Author(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    email: str | None = None


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """A validated ``plugin.toml``. ``directory`` is the plugin's absolute folder;
    ``requires_cordon`` and the values of ``requires`` are normalised PEP 440 specifiers
    (``""`` accepts any version)."""

    id: str
    name: str
    version: str
    description: str
    entry_module: str
    entry_attr: str
    directory: str
    authors: tuple[Author, ...] = ()
    keywords: tuple[str, ...] = ()
    license: str | None = None
    homepage: str | None = None
    requires_cordon: str = ""
    requires: dict[str, str] = msgspec.field(default_factory=dict)
    permissions: tuple[str, ...] = ()
    #: PEP 508 requirements (as written) for the plugin's own environment; see ``cordon plugin
    #: lock``. Never a direct reference (``name @ url``): that would bypass the lock's index.
    dependencies: tuple[str, ...] = ()
    activate: Literal["lazy", "eager"] | None = None
    protocol: int | None = None
    contributes: Contributes = msgspec.field(default_factory=Contributes)
    #: The file this was read from (for messages); ``None`` when parsed from data.
    source: str | None = None

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)

    @property
    def entry(self) -> str:
        return f"{self.entry_module}:{self.entry_attr}"


# -- version requirements -----------------------------------------------------------------------

_NPM: Final = re.compile(r"([\^~])\s*v?(\d+(?:\.\d+){0,2})")


def _npm_clause(op: str, text: str) -> str:
    parts = [int(p) for p in text.split(".")]
    release = ".".join(map(str, parts))
    if op == "^":
        # ^ allows changes that do not touch the left-most non-zero part (npm semantics):
        # ^1.2 -> <2, ^0.2 -> <0.3, ^0.0.3 -> <0.0.4; all-zero bumps the last given part.
        idx = next((i for i, p in enumerate(parts) if p != 0), len(parts) - 1)
    else:
        # ~ allows patch-level changes when a minor is given (~1.2 -> <1.3), else minor-level.
        idx = 0 if len(parts) == 1 else 1
    upper = [*parts[:idx], parts[idx] + 1]
    return f">={release},<{'.'.join(map(str, upper))}"


def translate_requirement(text: str) -> SpecifierSet:
    """A version requirement as a :class:`SpecifierSet`: any PEP 440 specifier set, plus
    npm's ``^`` and ``~`` per clause (``"^1.2"`` -> ``>=1.2,<2``; ``"~1.2.3"`` ->
    ``>=1.2.3,<1.3``), and ``""``/``"*"`` for any version. Raises ``ValueError``.

    ``~=`` is PEP 440's compatible-release operator and is left alone.
    """
    if not isinstance(text, str):
        raise ValueError(f"{show(text)} is not a version requirement")
    clauses = [c.strip() for c in text.split(",")]
    if clauses == [""] or clauses == ["*"]:
        return SpecifierSet("")
    out: list[str] = []
    for clause in clauses:
        if clause.startswith(("^", "~")) and not clause.startswith("~="):
            m = _NPM.fullmatch(clause)
            if m is None:
                part = f"{show(clause)} " if len(clauses) > 1 else ""
                raise ValueError(
                    f"{show(text)} is not a version requirement: {part}{clause[0]} needs a "
                    "release number like 1, 1.2 or 1.2.3"
                )
            out.append(_npm_clause(m[1], m[2]))
        elif clause:
            out.append(clause)
        else:
            raise ValueError(f"{show(text)} is not a version requirement: empty clause")
    try:
        return SpecifierSet(",".join(out))
    except InvalidSpecifier:
        hint = ""
        if len(clauses) == 1 and _looks_like_version(clauses[0]):
            v = clauses[0]
            hint = f' (did you mean ">={v}", "=={v}" or "^{v}"?)'
        raise ValueError(f"{show(text)} is not a version requirement{hint}") from None


def _looks_like_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def check_cordon_compat(manifest: Manifest, running_version: str) -> None:
    """Raise :class:`ManifestError` unless this cordon satisfies ``requires-cordon``."""
    spec = SpecifierSet(manifest.requires_cordon)
    # The running version is a fact, not a candidate to choose: a development build (0.2.0.dev1)
    # must still count, so pre-releases are always allowed here.
    if spec.contains(running_version, prereleases=True):
        return
    raise ManifestError(
        source=manifest.source,
        problems=[
            Problem(
                "plugin.requires-cordon",
                f"plugin {manifest.id!r} requires cordon {show(str(spec))}, "
                f"but this is cordon {running_version}",
            )
        ],
    )


# -- parsing ------------------------------------------------------------------------------------

_PLUGIN_KEYS: Final = (
    "id",
    "name",
    "version",
    "description",
    "entry",
    "authors",
    "keywords",
    "license",
    "homepage",
    "requires-cordon",
    "protocol",
    "permissions",
    "activate",
    "requires",
    "dependencies",
)
_REQUIRED: Final = ("id", "name", "version", "entry")


def _check_id(value: object) -> str | None:
    if isinstance(value, str) and PLUGIN_ID.fullmatch(value):
        return None
    return (
        f"{show(value)} is not a plugin id (lower-case letter, then up to 63 lower-case "
        "letters, digits, _ or -)"
    )


def _parse_entry(
    ck: Checker, path: str, value: object, directory: Path | None
) -> tuple[str, str] | Invalid:
    text = ck.expect_str(path, value)
    if isinstance(text, Invalid):
        return text
    module, sep, attr = text.partition(":")

    def ident(s: str) -> bool:
        return s.isidentifier() and not keyword.iskeyword(s)

    if not sep or not all(ident(p) for p in module.split(".")) or not ident(attr):
        return ck.add(
            path,
            f"{show(text)} is not an entry point (expected module:attribute, "
            'like "hello_plugin:plugin")',
        )
    if directory is not None:
        # Relative to the folder, or through the folder's own package path (an installed
        # distribution's "greeter_pkg.core"): the rule the worker imports by.
        _package, below = split_entry_module(module, directory)
        base = directory.joinpath(*below)
        if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
            rel = "/".join(below)
            return ck.add(
                path,
                f"module {show(module)} not found in the plugin directory "
                f"(looked for {rel}.py and {rel}/__init__.py)",
            )
    return module, attr


def _parse_version(ck: Checker, path: str, value: object) -> str | Invalid:
    text = ck.expect_str(path, value)
    if isinstance(text, Invalid):
        return text
    if not _looks_like_version(text):
        return ck.add(path, f"{show(text)} is not a PEP 440 version")
    return text


def _parse_requirement(ck: Checker, path: str, value: object) -> str | Invalid:
    if not isinstance(value, str):
        return ck.wrong_type(path, 'a version requirement like ">=1.0" or "^1.0"', value)
    try:
        return str(translate_requirement(value))
    except ValueError as exc:
        return ck.add(path, str(exc))


def _parse_authors(ck: Checker, path: str, value: object) -> tuple[Author, ...] | Invalid:
    items = ck.expect_list(path, value)
    if isinstance(items, Invalid):
        return items
    out: list[Author] = []
    for i, item in enumerate(items):
        where = join(path, i)
        if isinstance(item, str):
            # A bare name is fine; the table form is only needed to add an email.
            name = ck.expect_str(where, item)
            if not isinstance(name, Invalid):
                out.append(Author(name=name))
            continue
        table = ck.expect_table(where, item)
        if isinstance(table, Invalid):
            continue
        ck.check_keys(where, table, ("name", "email"), required=("name",))
        name = ck.expect_str(join(where, "name"), table.get("name", "")) if "name" in table else ""
        email: str | Invalid | None = None
        if "email" in table:
            email = ck.expect_str(join(where, "email"), table["email"])
            if isinstance(email, str) and not _EMAIL.fullmatch(email):
                email = ck.add(join(where, "email"), f"{show(email)} is not an email address")
        if isinstance(name, str) and name and not isinstance(email, Invalid):
            out.append(Author(name=name, email=email))
    return tuple(out) if len(out) == len(items) else INVALID


def _parse_permissions(ck: Checker, path: str, value: object) -> tuple[str, ...] | Invalid:
    return ck.expect_str_list(path, value, check=check_permission_string, unique=True)


#: A dependency line is one requirement; anything longer is not a requirement.
_MAX_DEPENDENCY_LEN: Final = 1000


def _check_dependency(text: str) -> str | None:
    """Why ``text`` is not an acceptable PEP 508 dependency (or ``None``)."""
    from packaging.requirements import InvalidRequirement, Requirement

    if len(text) > _MAX_DEPENDENCY_LEN:
        return f"longer than {_MAX_DEPENDENCY_LEN} characters"
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        return f"{show(text)} is not a PEP 508 requirement: {exc}"
    if req.url is not None:
        # A direct reference is fetched from wherever it says, past the index options and the
        # lock's hashes: only named requirements resolved by the lock are installed.
        return f"{show(text)} is a direct reference (name @ url); name a version from an index"
    return None


def _parse_dependencies(ck: Checker, path: str, value: object) -> tuple[str, ...] | Invalid:
    return ck.expect_str_list(path, value, check=_check_dependency, unique=True)


def _parse_requires(
    ck: Checker, path: str, value: object, own_id: object
) -> dict[str, str] | Invalid:
    table = ck.expect_table(path, value)
    if isinstance(table, Invalid):
        return table
    out: dict[str, str] = {}
    for dep, spec in table.items():
        where = join(path, str(dep))
        if (why := _check_id(dep)) is not None:
            ck.add(where, why)
            continue
        if dep == own_id:
            ck.add(where, "a plugin cannot require itself")
            continue
        parsed = _parse_requirement(ck, where, spec)
        if not isinstance(parsed, Invalid):
            out[dep] = parsed
    return out if len(out) == len(table) else INVALID


def parse_manifest(
    data: Mapping[str, Any],
    *,
    directory: str | os.PathLike[str] | None,
    source: str | None = None,
) -> Manifest:
    """Validate ``data`` (a parsed ``plugin.toml``). The entry module must exist in
    ``directory``; ``None`` skips that check (and leaves ``Manifest.directory`` empty), for
    manifests seen without their code. Raises one :class:`ManifestError` listing every
    problem."""
    folder = Path(directory).resolve() if directory is not None else None
    return _validated(data, folder, source)


def _validated(data: Mapping[str, Any], folder: Path | None, source: str | None) -> Manifest:
    """:func:`parse_manifest` once ``folder`` is resolved."""
    ck = Checker()
    manifest = _parse(ck, data, folder, source)
    if ck or manifest is None:
        raise ManifestError(source=source, problems=ck.problems)
    return manifest


def _parse(ck: Checker, data: object, folder: Path | None, source: str | None) -> Manifest | None:
    if not isinstance(data, Mapping):
        ck.wrong_type("", "a table", data)
        return None
    ck.check_keys("", data, ("plugin", "contributes"))
    if "plugin" not in data:
        ck.add("plugin", "missing (required): a [plugin] table with id, name, version and entry")
        return None
    p = ck.expect_table("plugin", data["plugin"])
    if isinstance(p, Invalid):
        return None
    ck.check_keys("plugin", p, _PLUGIN_KEYS, required=_REQUIRED)

    def at(key: str) -> str:
        return join("plugin", key)

    fields: dict[str, Any] = {}
    if "id" in p:
        why = _check_id(p["id"])
        fields["id"] = ck.add(at("id"), why) if why is not None else p["id"]
    if "name" in p:
        fields["name"] = ck.expect_str(at("name"), p["name"], max_len=200)
    if "version" in p:
        fields["version"] = _parse_version(ck, at("version"), p["version"])
    fields["description"] = (
        ck.expect_str(at("description"), p["description"], non_empty=False)
        if "description" in p
        else ""
    )
    if "entry" in p:
        entry = _parse_entry(ck, at("entry"), p["entry"], folder)
        if not isinstance(entry, Invalid):
            fields["entry_module"], fields["entry_attr"] = entry
        else:
            fields["entry_module"] = entry
    if "authors" in p:
        fields["authors"] = _parse_authors(ck, at("authors"), p["authors"])
    if "keywords" in p:
        fields["keywords"] = ck.expect_str_list(at("keywords"), p["keywords"])
    if "license" in p:
        fields["license"] = ck.expect_str(at("license"), p["license"])
    if "homepage" in p:
        url = ck.expect_str(at("homepage"), p["homepage"])
        # Hosts render this as a link: only http(s), never javascript: or file:.
        if isinstance(url, str) and not _URL.fullmatch(url):
            url = ck.add(at("homepage"), f"{show(url)} is not an http(s) URL")
        fields["homepage"] = url
    if "requires-cordon" in p:
        fields["requires_cordon"] = _parse_requirement(
            ck, at("requires-cordon"), p["requires-cordon"]
        )
    if "protocol" in p:
        fields["protocol"] = ck.expect_int(at("protocol"), p["protocol"], minimum=1)
    if "permissions" in p:
        fields["permissions"] = _parse_permissions(ck, at("permissions"), p["permissions"])
    if "dependencies" in p:
        fields["dependencies"] = _parse_dependencies(ck, at("dependencies"), p["dependencies"])
    if "activate" in p:
        fields["activate"] = ck.expect_choice(at("activate"), p["activate"], ("lazy", "eager"))
    if "requires" in p:
        fields["requires"] = _parse_requires(ck, at("requires"), p["requires"], p.get("id"))
    if "contributes" in data:
        fields["contributes"] = parse_contributes(ck, data["contributes"])
    if ck:
        return None
    return Manifest(
        directory=str(folder) if folder is not None else "",
        source=source,
        **fields,
    )


def load_manifest(plugin_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``plugin_dir/plugin.toml`` (importing nothing from the plugin)."""
    folder = Path(plugin_dir).resolve()
    path = folder / MANIFEST_FILENAME
    ck = Checker()
    if not folder.is_dir():
        ck.add("", f"{folder} is not a directory")
        raise ManifestError(source=str(path), problems=ck.problems)
    data = read_toml(path, ck, max_bytes=MAX_MANIFEST_BYTES)
    if ck:
        raise ManifestError(source=str(path), problems=ck.problems)
    # Resolved above: resolving again walks the path once more, a stat per component.
    return _validated(data, folder, str(path))
