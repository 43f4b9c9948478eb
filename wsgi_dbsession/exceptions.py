"""Every error this package raises derives from :class:`SessionError`."""

from __future__ import annotations


class SessionError(Exception):
    """Root of the package's errors: ``except SessionError`` catches them all."""


class ConfigurationError(SessionError, ValueError):
    """An option has a value the middleware cannot work with."""


class SerializationError(SessionError, TypeError):
    """A session value cannot be serialized; ``key`` names the top-level key."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class SessionTooLarge(SessionError):
    """The serialized session is larger than the configured ``max_size``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the serialized session is {size} bytes, more than max_size={limit}; "
            "store large data elsewhere and keep a reference in the session"
        )
        self.size = size
        self.limit = limit


class StoreError(SessionError):
    """The session table could not be read or written."""


class StoreUnavailable(StoreError):
    """The database could not be reached (even after one retry on a fresh connection)."""


class ConcurrentUpdateError(StoreUnavailable):
    """Other requests kept changing the same session while this one tried to save it.

    Retryable, like an outage: the answer is ``unavailable_status`` with ``Retry-After``.
    """
