"""The package errors: one root, :class:`PackageError`, under cordon's :class:`CordonError`,
so ``except PackageError`` catches everything install, lock and pack refuse on purpose. Each
class names what was wrong (the requirement, the entry in the archive, the plugin)."""

from __future__ import annotations

from cordon.protocol import CordonError

__all__ = [
    "ConsentRefused",
    "EnvBuildError",
    "LockError",
    "NotInstalled",
    "PackageError",
    "PackageInvalid",
    "SdistOnly",
    "SignatureInvalid",
]


class PackageError(CordonError):
    """A plugin package, its lock or its environment cannot be used."""

    code = -32060


class LockError(PackageError):
    """The dependencies could not be resolved into a lock (or a lock file is malformed)."""

    code = -32061
    # ``field``: for a malformed lock file, where in it (``wheels[0].sha256``).
    _fields = ("requirement", "detail", "field")
    requirement: str | None
    detail: str | None
    field: str | None


class SdistOnly(LockError):
    """A dependency has no wheel for this interpreter and platform: building a source
    distribution would run its code on the host, so it is refused."""

    code = -32062
    _fields = ("requirement", "detail", "field")

    def _default_message(self) -> str:
        return (
            f"{self.requirement!r} has no wheel for this Python and platform; cordon installs "
            "wheels only (building a source distribution runs its code on the host)"
        )


class PackageInvalid(PackageError):
    """A ``.cordon`` archive is malformed, tampered with or unsafe to extract."""

    code = -32063
    _fields = ("path", "entry", "reason")
    path: str | None
    entry: str | None
    reason: str | None

    def _default_message(self) -> str:
        where = f" (entry {self.entry!r})" if self.entry else ""
        return f"package {self.path!r} is refused{where}: {self.reason}"


class SignatureInvalid(PackageError):
    """A signature is missing where required, does not verify, or is by an untrusted key."""

    code = -32064
    _fields = ("path", "key", "reason")
    path: str | None
    key: str | None
    reason: str | None


class EnvBuildError(PackageError):
    """``uv`` could not build a plugin's environment from its lock."""

    code = -32065
    _fields = ("key", "detail")
    key: str | None
    detail: str | None


class NotInstalled(PackageError):
    """No installed plugin has this id (or no previous version to roll back to)."""

    code = -32066
    _fields = ("plugin",)
    plugin: str | None


class ConsentRefused(PackageError):
    """The operator declined the permissions a plugin requests (or none could be asked)."""

    code = -32067
    _fields = ("plugin", "permissions")
    plugin: str | None
    permissions: list[str] | None
