"""The host APIs a worker calls (log, storage, config, events, exec, audit), each checked
against the operator's grants, and the redaction every plugin string goes through.
Imports only the settings room below it."""
