"""What the operator and the plugin author wrote, read and checked: the TOML config, the
plugin manifest, the grant grammar, sizes and durations, and the shared validation helpers.
Imports only :mod:`cordon.runtime._errors` (and the protocol)."""
