"""Error types that decide how distml exits.

User mistakes (config, data, arguments) are :class:`UserError` and end the command with
exit code 2 and one line; a peer that died is :class:`PeerError`; everything else is an
internal failure reported with the rank and the cause.
"""


class UserError(Exception):
    """A problem the user can fix: the message names it and says how. Exit code 2."""


class ConfigError(UserError, ValueError):
    """A config value, name or combination is invalid."""


class DataError(UserError):
    """A data file is missing, corrupt or does not fit the run (shapes, labels, size)."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated or does not match the run."""


class PeerError(RuntimeError):
    """A peer process died or stopped answering within the timeout."""
