"""Protocol version negotiation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ._errors import IncompatibleProtocol

__all__ = ["PROTOCOL_VERSION", "SUPPORTED_PROTOCOLS", "negotiate"]

#: Versions are integers; a bump means an incompatible change of method names or shapes.
PROTOCOL_VERSION: Final = 1
SUPPORTED_PROTOCOLS: Final[tuple[int, ...]] = (1,)


def negotiate(ours: Iterable[int], theirs: Iterable[int]) -> int:
    """The highest version both sides speak, or :class:`IncompatibleProtocol`."""
    ours_t, theirs_t = tuple(ours), tuple(theirs)
    common = set(ours_t) & {v for v in theirs_t if isinstance(v, int)}
    if not common:
        raise IncompatibleProtocol(ours=list(ours_t), theirs=list(theirs_t))
    return max(common)
