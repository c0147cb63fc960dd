"""What plugins contribute and how they are found: the contribution registry, discovery
(folders and entry points), versions and dependencies, hot reload.
Imports only the settings room below it."""
