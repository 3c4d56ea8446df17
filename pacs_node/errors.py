"""One exception hierarchy for the node; each edge translates it (DIMSE status, job row, HTTP)."""


class EnhancementError(Exception):
    """Base class of every error the node raises on purpose.

    ``code`` is a short machine-readable reason stored in the job row.
    """

    code = "error"


class InvalidSeriesError(EnhancementError):
    """The received series cannot be enhanced (bad pixel data, inconsistent geometry, ...)."""

    code = "invalid_series"


class ModelError(EnhancementError):
    """The enhancement model could not be loaded or failed on valid input."""

    code = "model_error"


class DispatchError(EnhancementError):
    """Queueing or sending failed for a reason that may go away (peer down, broker down)."""

    code = "dispatch_error"


class ConfigError(EnhancementError):
    """The configuration is invalid; raised at start-up."""

    code = "config_error"


class StorageError(EnhancementError):
    """A file could not be written to or read from the node's data directory."""

    code = "storage_error"


class ActionError(EnhancementError):
    """An admin action is not possible: unknown job (``missing``) or its state forbids it
    (``conflict``); the message says why."""

    code = "action_error"

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing
