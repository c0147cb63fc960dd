"""The community's path through the real CLI against a real registry: publish, search, install
by id, call in the sandbox, update, roll back; and the installs the registry's signature must
stop (a package swapped in its storage, a registry presenting another key)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest

from cordon.runtime._packages._store import installed
from tests.marketplace.conftest import package
from tests.marketplace.serving import Server
from tests.packages.installing import CORDON, leftovers

#: One CLI call: a Python start, one small download and install (no dependencies to build).
CLI_TIMEOUT = 120.0


def cordon(
    cwd: Path, *args: str, config: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(cwd / "cordon.toml")] if config else []
    return subprocess.run(
        [CORDON, *args, *extra],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=cwd,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture
def user(tmp_path: Path, registry: Server) -> Path:
    """A user's folder: its cordon.toml names a state dir and the registry ([registry] url)."""
    home = tmp_path / "user"
    home.mkdir()
    (home / "cordon.toml").write_text(
        f'[runtime]\nstate-dir = "state"\n\n[registry]\nurl = "{registry.url}"\n'
    )
    return home


def current_dir(user: Path, plugin_id: str) -> Path:
    record = installed(user / "state", plugin_id)
    assert record is not None
    return Path(record.plugin_dir)


def call_which(user: Path, plugin_id: str) -> dict[str, str]:
    out = ok(cordon(user, "call", str(current_dir(user, plugin_id)), "which"))
    result: dict[str, str] = json.loads(out)
    return result


def test_publish_search_install_call_update_and_rollback_through_the_registry(
    registry: Server, user: Path, tmp_path: Path
) -> None:
    token = registry.token("weather")
    v1 = package(tmp_path / "v1", "weather", "1.0.0", description="Forecasts for a city")
    # The token from the environment (a token in argv is visible to every user in ps).
    out = ok(cordon(user, "plugin", "publish", str(v1), env={"CORDON_REGISTRY_TOKEN": token}))
    assert "published weather 1.0.0" in out

    found = json.loads(ok(cordon(user, "plugin", "search", "wether", "--json")))
    assert [i["id"] for i in found["items"]] == ["weather"]
    assert found["items"][0]["permissions"] == ["log"]
    assert "permissions: log" in ok(cordon(user, "plugin", "search", "forecast"))
    info = ok(cordon(user, "plugin", "info", "weather", "--remote"))
    assert "weather 1.0.0" in info and "permissions: log" in info

    install = cordon(user, "plugin", "install", "weather", "--yes")
    assert "registry signature ok" in ok(install)
    assert "trusting" in install.stderr and "on first use" in install.stderr
    pins = json.loads((user / "state" / "registries.json").read_text())
    assert pins[registry.url]["how"] == "tofu"
    assert pins[registry.url]["key"] == (registry.data / "registry-key.pub").read_text().strip()
    # The plugin runs in the (default, strict) sandbox from its installed version dir.
    assert call_which(user, "weather") == {"self": "1.0.0"}

    v2 = package(tmp_path / "v2", "weather", "1.1.0")
    ok(cordon(user, "plugin", "register", str(v2), "--token", token))  # the seed's name
    assert "update weather 1.0.0 -> 1.1.0" in ok(cordon(user, "plugin", "update", "weather"))
    assert call_which(user, "weather") == {"self": "1.1.0"}

    ok(cordon(user, "plugin", "rollback", "weather"))
    assert call_which(user, "weather") == {"self": "1.0.0"}


def test_a_package_swapped_in_the_registry_storage_is_refused_at_install(
    registry: Server, user: Path, tmp_path: Path
) -> None:
    ok(
        cordon(
            user,
            "plugin",
            "publish",
            str(package(tmp_path, "swapped")),
            "--token",
            registry.token("swapped"),
        )
    )
    stored = registry.data / "packages" / "swapped" / "1.0.0.cordon"
    # The attacker rewrites the plugin's code inside the stored archive...
    evil = tmp_path / "evil.cordon"
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "entry_main.py":
                data = data.replace(b"return {", b"import os; os.system('id'); return {")
            dst.writestr(item, data)
    evil.replace(stored)
    refused = cordon(user, "plugin", "install", "swapped", "--yes")
    assert refused.returncode == 23, (refused.stdout, refused.stderr)
    assert "SignatureInvalid" in refused.stderr and "sha256" in refused.stderr
    # ...and, with write access to the database too, records the new hash: without the
    # registry's private key the signature over (id, version, sha256) still fails.
    import hashlib

    with sqlite3.connect(registry.data / "registry.sqlite3") as db:
        db.execute(
            "UPDATE versions SET sha256 = ?, size = ? WHERE plugin_id = 'swapped'",
            (hashlib.sha256(stored.read_bytes()).hexdigest(), stored.stat().st_size),
        )
    db.close()
    refused = cordon(user, "plugin", "install", "swapped", "--yes")
    assert refused.returncode == 23, (refused.stdout, refused.stderr)
    assert "registry's signature" in refused.stderr
    assert leftovers(user / "state") == []
    cache = user / "state" / "registry-cache"
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_a_registry_presenting_another_key_than_the_pinned_one_is_refused(
    registry: Server, user: Path, tmp_path: Path
) -> None:
    ok(
        cordon(
            user,
            "plugin",
            "publish",
            str(package(tmp_path, "pinned")),
            "--token",
            registry.token("pinned"),
        )
    )
    other = ok(cordon(user, "key", "new", str(tmp_path / "other.pem"), config=False)).split()[0]
    ok(cordon(user, "registry", "trust", registry.url, other))
    refused = cordon(user, "plugin", "install", "pinned", "--yes")
    assert refused.returncode == 23, refused.stderr
    assert "now serves key" in refused.stderr and other in refused.stderr
    assert leftovers(user / "state") == []
    # Pinning the registry's real key (what it serves, fetched) lets the install through.
    ok(cordon(user, "registry", "trust", registry.url))
    ok(cordon(user, "plugin", "install", "pinned", "--yes"))


def test_a_yanked_version_is_skipped_unless_pinned_exactly(
    registry: Server, user: Path, tmp_path: Path
) -> None:
    token = registry.token("yanky")
    for version in ("1.0.0", "1.1.0"):
        ok(
            cordon(
                user,
                "plugin",
                "publish",
                str(package(tmp_path / version, "yanky", version)),
                "--token",
                token,
            )
        )
    ok(
        cordon(
            user, "plugin", "yank", "yanky", "1.1.0", "--reason", "CVE-2026-0001", "--token", token
        )
    )
    info = ok(cordon(user, "plugin", "info", "yanky", "--remote"))
    assert "1.1.0  (yanked: CVE-2026-0001)" in info
    assert "yanky 1.0.0" in ok(cordon(user, "plugin", "install", "yanky", "--yes"))
    assert call_which(user, "yanky") == {"self": "1.0.0"}
    # A range does not reach it either; only the exact pin does (with a warning).
    assert "yanky 1.0.0" in ok(cordon(user, "plugin", "install", "yanky>=1.0", "--yes"))
    pinned = cordon(user, "plugin", "install", "yanky@1.1.0", "--yes")
    assert "installed yanky 1.1.0" in ok(pinned)
    assert "yanked: CVE-2026-0001" in pinned.stderr
    missing = cordon(user, "plugin", "install", "yanky>=1.1", "--yes")
    assert missing.returncode == 30 and "PluginNotFound" in missing.stderr


def test_cli_errors_name_the_registry_failure_with_its_exit_code(
    registry: Server, user: Path, tmp_path: Path
) -> None:
    path = package(tmp_path, "scoped")
    wrong = cordon(user, "plugin", "publish", str(path), "--token", registry.token("other"))
    assert wrong.returncode == 31 and "scope" in wrong.stderr
    ok(cordon(user, "plugin", "publish", str(path), "--token", registry.token("scoped")))
    again = cordon(user, "plugin", "publish", str(path), "--token", registry.token("scoped"))
    assert again.returncode == 31 and "version_exists" in again.stderr
    nothing = cordon(user, "plugin", "install", "nosuchplugin", "--yes")
    assert nothing.returncode == 30 and "PluginNotFound" in nothing.stderr
    insecure = cordon(user, "plugin", "search", "x", "--registry", "http://example.com")
    assert insecure.returncode == 31 and "https" in insecure.stderr
    assert registry.alive()


def test_text_from_the_registry_reaches_the_terminal_without_its_escape_sequences(
    registry: Server, user: Path, tmp_path: Path
) -> None:
    # Terminal escapes in a description and a readme: clear the screen, set the clipboard
    # (OSC 52), rewrite the title. The catalogue is as untrusted as the plugins it lists.
    hostile = "\x1b[2J\x1b]52;c;Y3VybCBldmlsfHNo\x07\x1b]0;pwned\x07"
    path = package(tmp_path, "noisy", description=f"nice {hostile}", readme=f"# Hi\n{hostile}\n")
    ok(cordon(user, "plugin", "publish", str(path), "--token", registry.token("noisy")))
    for args in (("search", "noisy"), ("info", "noisy", "--remote")):
        out = ok(cordon(user, "plugin", *args))
        assert "noisy" in out
        assert "\x1b" not in out and "\x07" not in out, out
    assert "# Hi" in out  # the readme is shown, line by line
