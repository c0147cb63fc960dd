"""The registry client's errors, under cordon's :class:`CordonError` so the CLI maps each to an
exit code. A signature that does not verify is the package room's
:class:`~cordon.runtime._packages._errors.SignatureInvalid` (one error for one failure,
whether the publisher's or the registry's signature failed)."""

from __future__ import annotations

from cordon.protocol import CordonError

from .._packages._errors import SignatureInvalid

__all__ = [
    "PluginNotFound",
    "RegistryError",
    "RegistryRefused",
    "RegistryUnavailable",
    "SignatureInvalid",
]


class RegistryError(CordonError):
    """A plugin registry could not be used."""

    code = -32080


class RegistryUnavailable(RegistryError):
    """The registry did not answer (connection refused, timeout, or 5xx after the retries)."""

    code = -32081
    _fields = ("url", "detail")
    url: str | None
    detail: str | None

    def _default_message(self) -> str:
        return f"registry {self.url} is unavailable: {self.detail}"


class PluginNotFound(RegistryError):
    """The registry has no such plugin (or no such version, or none matching a spec)."""

    code = -32082
    _fields = ("plugin", "version")
    plugin: str | None
    version: str | None

    def _default_message(self) -> str:
        what = f"{self.plugin} {self.version}" if self.version else f"{self.plugin}"
        return f"the registry has no plugin {what}"


class RegistryRefused(RegistryError):
    """The registry refused a request (4xx): ``reason`` is its error code (``scope``,
    ``version_exists``, ``lookalike``, ``too_large``, ...)."""

    code = -32083
    _fields = ("status", "reason", "detail")
    status: int | None
    reason: str | None
    detail: str | None

    def _default_message(self) -> str:
        return f"the registry refused ({self.status} {self.reason}): {self.detail}"
