"""cordon's host runtime: load untrusted plugins into sandboxed, supervised workers.

>>> from cordon.runtime import Runtime
>>> async with Runtime("cordon.toml") as rt:                   # doctest: +SKIP
...     hello = await rt.load("examples/plugins/hello")
...     await hello.call("greet", {"name": "Ada"})
"""

from cordon.protocol import (
    CallCancelled,
    CallTimeout,
    CordonError,
    FrameTooLarge,
    IncompatibleProtocol,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    PermissionDenied,
    PluginError,
    PluginUnavailable,
    ProtocolError,
    QuotaExceeded,
    RemoteError,
    SandboxUnavailable,
    WorkerCrashed,
)

from . import versions
from ._cli._control import ControlSocketError, HostAlreadyRunning, HostNotRunning
from ._cli._oplog import configure_logging
from ._cli._scaffold import ScaffoldError
from ._core._loading import LoadFailure, LoadReport, PluginInUse
from ._core._routing import MiddlewareFailed
from ._core._runtime import Runtime
from ._errors import ConfigError, ManifestError, Problem
from ._marketplace._errors import (
    PluginNotFound,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
)
from ._packages._errors import (
    ConsentRefused,
    EnvBuildError,
    LockError,
    NotInstalled,
    PackageError,
    PackageInvalid,
    SdistOnly,
    SignatureInvalid,
)
from ._platform._registry import (
    AmbiguousContribution,
    ContributionInfo,
    Registry,
    UnknownContribution,
    UnknownExtensionPoint,
)
from ._platform._versions import DependencyError
from ._settings._config import Config, PluginSettings, load_config, parse_config
from ._settings._manifest import Manifest, load_manifest
from ._supervise._handle import PLUGIN_STATES, PluginHandle
from ._supervise._stats import PluginStats
from .versions import InvalidVersionError, NoMigrationPath, VersionError

__all__ = [
    "PLUGIN_STATES",
    "AmbiguousContribution",
    "CallCancelled",
    "CallTimeout",
    "Config",
    "ConfigError",
    "ConsentRefused",
    "ContributionInfo",
    "ControlSocketError",
    "CordonError",
    "DependencyError",
    "EnvBuildError",
    "FrameTooLarge",
    "HostAlreadyRunning",
    "HostNotRunning",
    "IncompatibleProtocol",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "InvalidVersionError",
    "LoadFailure",
    "LoadReport",
    "LockError",
    "Manifest",
    "ManifestError",
    "MethodNotFound",
    "MiddlewareFailed",
    "NoMigrationPath",
    "NotInstalled",
    "PackageError",
    "PackageInvalid",
    "ParseError",
    "PermissionDenied",
    "PluginError",
    "PluginHandle",
    "PluginInUse",
    "PluginNotFound",
    "PluginSettings",
    "PluginStats",
    "PluginUnavailable",
    "Problem",
    "ProtocolError",
    "QuotaExceeded",
    "Registry",
    "RegistryError",
    "RegistryRefused",
    "RegistryUnavailable",
    "RemoteError",
    "Runtime",
    "SandboxUnavailable",
    "ScaffoldError",
    "SdistOnly",
    "SignatureInvalid",
    "UnknownContribution",
    "UnknownExtensionPoint",
    "VersionError",
    "WorkerCrashed",
    "configure_logging",
    "load_config",
    "load_manifest",
    "parse_config",
    "versions",
]
