"""The :class:`Runtime`: loads plugins, owns the shared services (storage, audit, events,
logs), routes calls to contributions. Imports every room below it."""
