"""The command line: ``cordon`` and its command groups, ``cordon run`` serving JSON-RPC on
stdin and the control socket, the scaffold, exit codes. The top room: nothing imports it
(but the public facade, for its error classes)."""
