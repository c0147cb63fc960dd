"""One worker process's life under supervision: spawn, handshake, the channel and its
pending calls, the asyncio fast path, exit reasons, cgroups, stats, and the plugin handle
that restarts it with backoff behind a circuit breaker.
Imports the platform, host API and settings rooms below it."""
