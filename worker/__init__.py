"""cordon's worker side: the authoring API plugins use.

This package runs inside the sandboxed worker process. It imports nothing from
``cordon.runtime`` and keeps its import cost small: the worker starts once per plugin.
"""

from cordon.protocol import (
    CallCancelled,
    CordonError,
    HttpError,
    InvalidParams,
    PermissionDenied,
    PluginError,
    QuotaExceeded,
)

from ._context import Context
from ._hostapi import CommandNotFound, ExecResult
from ._http import HttpResponse, SecretRef
from ._plugin import Plugin, PluginDefinitionError

__all__ = [
    "CallCancelled",
    "CommandNotFound",
    "Context",
    "CordonError",
    "ExecResult",
    "HttpError",
    "HttpResponse",
    "InvalidParams",
    "PermissionDenied",
    "Plugin",
    "PluginDefinitionError",
    "PluginError",
    "QuotaExceeded",
    "SecretRef",
]
