"""Hostile test plugin: tries to get native calls back while being imported."""

import ctypes

from cordon.worker import Plugin

ctypes.CDLL(None).execv(b"/bin/sh", None)
plugin = Plugin()
