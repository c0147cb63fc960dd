"""The registry commands: ``cordon registry serve|token create|token revoke|trust`` and the
plugin commands that talk to a registry: ``cordon plugin search``, ``info ID --remote``,
``install ID[@VERSION|SPEC]``, ``update ID`` (of a plugin installed from a registry),
``publish FILE`` (alias ``register``) and ``yank ID VERSION``.

The work is :mod:`cordon.runtime._marketplace`'s. A registry install downloads into
``<state>/registry-cache/<registry>/``, after checking the registry's signature with the key
pinned for that URL (or pinning the one it serves, on first use, and saying so) and the bytes'
hash; the file then goes through the ordinary install (:mod:`._cmd_packages`): the package's
own hashes, the signature policy, the permissions question. Text from a registry is shown
through :func:`shown` (a registry is as untrusted as the plugins it lists).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._cmd_common import shown
from ._cmd_packages import _config, _stage_and_commit, _state_dir, cmd_plugin_install
from ._cmd_packages import cmd_plugin_update as _update_from_source
from ._cmd_plugin import cmd_plugin_info as _local_info
from ._exitcodes import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from .._marketplace._client import RegistryClient
    from .._settings._config import Config

__all__ = [
    "add_registry_option",
    "cmd_plugin_info_any",
    "cmd_plugin_install_any",
    "cmd_plugin_publish",
    "cmd_plugin_search",
    "cmd_plugin_update_any",
    "cmd_plugin_yank",
    "cmd_registry_serve",
    "cmd_registry_token_create",
    "cmd_registry_token_revoke",
    "cmd_registry_trust",
]

TOKEN_ENV: Final = "CORDON_REGISTRY_TOKEN"
CACHE_DIR: Final = "registry-cache"
_SECONDS_PER_DAY: Final = 86400.0
#: A terminal shows the top of a readme; the registry's page has the rest.
_README_LINES: Final = 200
T = TypeVar("T")


def add_registry_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--registry", metavar="URL", help="the registry (default: [registry] url in the config)"
    )


def _run(func: Callable[[], Awaitable[T]]) -> T:
    import anyio

    return anyio.run(func)


def _registry_url(args: argparse.Namespace, cfg: Config) -> str:
    from .._marketplace._errors import RegistryRefused

    url = getattr(args, "registry", None) or cfg.registry.url
    if not url:
        raise RegistryRefused(
            "no registry: pass --registry URL or set [registry] url in the config",
            reason="no_registry",
        )
    return str(url)


def _client(url: str) -> RegistryClient:
    from .._marketplace._client import RegistryClient

    return RegistryClient(url)


def _token(args: argparse.Namespace) -> str:
    from .._marketplace._errors import RegistryRefused

    # The environment first-class: a token on the command line is visible in ps.
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise RegistryRefused(
            f"a publish token is needed: --token T or ${TOKEN_ENV}", reason="unauthorized"
        )
    return str(token)


async def _registry_key(reg: RegistryClient, state: Path) -> str:
    """The key pinned for this registry; on first use, the one it serves (recorded, and
    said so). A registry now serving another key than the pinned one is refused."""
    from .._marketplace._errors import SignatureInvalid
    from .._marketplace._trust import pin_key, pinned_key

    served = str((await reg.well_known()).get("key", ""))
    pin = pinned_key(state, reg.url)
    if pin is None:
        pin = pin_key(state, reg.url, served, "tofu")
        print(
            f"cordon: trusting {reg.url} on first use with key {pin.key} (recorded; check it "
            "with the registry's operator, or pin it: cordon registry trust URL KEY)",
            file=sys.stderr,
        )
        return pin.key
    if served != pin.key:
        raise SignatureInvalid(
            f"registry {reg.url} now serves key {shown(served)}, but {pin.key} is pinned "
            f"({pin.how}); if the registry rotated its key, pin the new one with cordon "
            "registry trust URL KEY",
            path=reg.url,
            key=served,
            reason="registry key changed",
        )
    return pin.key


# -- cordon registry ... -----------------------------------------------------------------------


def cmd_registry_serve(args: argparse.Namespace) -> int:
    from .._marketplace._serve import serve

    def ready(url: str) -> None:
        print(f"cordon registry serving {args.data} on {url}", flush=True)

    serve(Path(args.data), args.host, args.port, on_ready=ready)
    return EXIT_OK


def cmd_registry_token_create(args: argparse.Namespace) -> int:
    from .._marketplace._publish import Registry

    expires = args.expires_days * _SECONDS_PER_DAY if args.expires_days is not None else None
    token = Registry(Path(args.data)).create_token(list(args.scope), expires)
    print(token)
    print(
        f"scope {', '.join(sorted(set(args.scope)))}; shown once (only its hash is stored)",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_registry_token_revoke(args: argparse.Namespace) -> int:
    from .._marketplace._errors import RegistryRefused
    from .._marketplace._publish import Registry
    from .._marketplace._trust import hash_token

    if not Registry(Path(args.data)).db.revoke_token(hash_token(args.token)):
        raise RegistryRefused("no such token in this registry", reason="unknown_token")
    print("revoked")
    return EXIT_OK


def cmd_registry_trust(args: argparse.Namespace) -> int:
    from .._marketplace._client import check_registry_url
    from .._marketplace._trust import pin_key

    url = check_registry_url(args.url)
    state = _state_dir(_config(args))
    if args.key:
        pin = pin_key(state, url, args.key, "pinned")
    else:

        async def fetch() -> str:
            async with _client(url) as reg:
                return str((await reg.well_known()).get("key", ""))

        pin = pin_key(state, url, _run(fetch), "fetched")
    print(f"{url} pinned to {pin.key}")
    return EXIT_OK


# -- cordon plugin ... against a registry ------------------------------------------------------


def _line(item: dict[str, Any]) -> str:
    rating = f"{item['rating']:.1f}★({item['rating_count']})" if item.get("rating") else "-"
    perms = ", ".join(item.get("permissions") or []) or "none"
    return (
        f"{shown(item['id'])} {shown(item['version'])}  {item['downloads']} downloads  {rating}"
        f"\n    {shown(item['description'])}\n    permissions: {shown(perms)}"
    )


def cmd_plugin_search(args: argparse.Namespace) -> int:
    url = _registry_url(args, _config(args))

    async def go() -> dict[str, Any]:
        async with _client(url) as reg:
            return await reg.search(
                args.query, category=args.category, sort=args.sort, limit=args.limit
            )

    result = _run(go)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return EXIT_OK
    for item in result["items"]:
        print(_line(item))
    print(f"({len(result['items'])} of {result['total']})")
    return EXIT_OK


def cmd_plugin_info_any(args: argparse.Namespace) -> int:
    if not args.remote:
        return _local_info(args)
    url = _registry_url(args, _config(args))

    async def go() -> dict[str, Any]:
        async with _client(url) as reg:
            return await reg.get(args.plugin_id)

    info = _run(go)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    print(_line(info))
    print(f"    author: {shown(info['author'] or '-')}  category: {shown(info['category'])}")
    for field in ("homepage", "repository"):
        if info.get(field):
            print(f"    {field}: {shown(info[field])}")
    if info.get("dependencies"):
        print(f"    dependencies: {shown(', '.join(info['dependencies']))}")
    for v in info["versions"]:
        mark = f"  (yanked: {shown(v['yank_reason'])})" if v["yanked"] else ""
        print(f"    version {shown(v['version'])}{mark}")
    if info.get("readme"):
        print()
        # Line by line: shown() makes one line of what it is given, and neutralises escapes.
        for line in str(info["readme"]).splitlines()[:_README_LINES]:
            print(shown(line))
    return EXIT_OK


def _is_registry_request(source: str) -> bool:
    from .._marketplace._client import parse_request
    from .._settings._config_values import check_plugin_id

    if "://" in source or os.path.exists(source) or source.endswith(".cordon"):
        return False
    plugin_id, _ = parse_request(source)
    return check_plugin_id(plugin_id) is None


def _cache_dir(state: Path, url: str) -> Path:
    # One folder per registry: two registries may both have foo 1.0, with other bytes.
    path = state / CACHE_DIR / hashlib.sha256(url.encode()).hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


def _install_from_registry(args: argparse.Namespace, request: str) -> int:
    from .._marketplace._client import parse_request, resolve

    cfg = _config(args)
    url = _registry_url(args, cfg)
    state = _state_dir(cfg)
    plugin_id, want = parse_request(request)

    async def fetch() -> tuple[Path, dict[str, Any]]:
        async with _client(url) as reg:
            key = await _registry_key(reg, state)
            info = resolve(plugin_id, await reg.versions(plugin_id), want)
            return await reg.download(info, _cache_dir(state, reg.url), key=key), info

    path, info = _run(fetch)
    print(f"downloaded {plugin_id} {shown(info['version'])} from {url} (registry signature ok)")
    if info["yanked"]:
        print(
            f"cordon: warning: {plugin_id} {shown(info['version'])} is yanked: "
            f"{shown(info['yank_reason'])} (installed because pinned exactly)",
            file=sys.stderr,
        )
    return _stage_and_commit(args, str(path))


def cmd_plugin_install_any(args: argparse.Namespace) -> int:
    if _is_registry_request(args.source):
        return _install_from_registry(args, args.source)
    return cmd_plugin_install(args)


def cmd_plugin_update_any(args: argparse.Namespace) -> int:
    """From the registry when asked (``--registry``) or when the plugin came from one;
    otherwise the package command's update (same source, or SOURCE)."""
    from .._packages._errors import NotInstalled
    from .._packages._store import installed

    if args.source is None:
        cfg = _config(args)
        state = _state_dir(cfg)
        have = installed(state, args.plugin_id)
        if have is None:
            raise NotInstalled(f"{args.plugin_id} is not installed", plugin=args.plugin_id)
        from_registry = Path(have.source).is_relative_to(state / CACHE_DIR)
        if args.registry or from_registry:
            return _install_from_registry(args, args.plugin_id)
    return _update_from_source(args)


def cmd_plugin_publish(args: argparse.Namespace) -> int:
    url = _registry_url(args, _config(args))
    token = _token(args)
    package = Path(args.file)
    if not package.is_file():
        print(
            f"cordon: plugin publish: {args.file}: not a file (cordon plugin pack DIR first)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def go() -> dict[str, Any]:
        async with _client(url) as reg:
            return await reg.publish(
                package, token, category=args.category, repository=args.repository or ""
            )

    result = _run(go)
    print(f"published {result['id']} {result['version']} (sha256 {result['sha256']}) to {url}")
    return EXIT_OK


def cmd_plugin_yank(args: argparse.Namespace) -> int:
    url = _registry_url(args, _config(args))
    token = _token(args)

    async def go() -> None:
        async with _client(url) as reg:
            await reg.yank(args.plugin_id, args.version, args.reason, token)

    _run(go)
    print(f"yanked {args.plugin_id} {args.version}: {shown(args.reason)}")
    return EXIT_OK
