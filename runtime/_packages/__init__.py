"""Installable plugins: the lock (exact wheels and their hashes), the ``.cordon`` package
(a reproducible archive with every file's sha256 and an optional Ed25519 signature), each
plugin's environment built by ``uv`` from its lock, and the store of installed plugins under the
state dir. Nothing a package contains runs on the host: wheels only, no build step, no ``.pth``.
Imports only the settings room and the error root below it."""
