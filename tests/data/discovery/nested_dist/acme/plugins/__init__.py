"""Discovery must never import this: it records the import, then refuses to load."""

import os
import pathlib

_marker = os.environ.get("CORDON_DISCOVERY_MARKER")
if _marker:
    pathlib.Path(_marker).write_text(__name__ + "\n")
raise RuntimeError(f"{__name__} was imported by discovery")
