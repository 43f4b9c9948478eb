"""Server-side sessions for any WSGI app, stored in an SQL table shared with
Node's connect-session-knex."""

from __future__ import annotations

from .cookies import SessionCookie, generate_sid, sign, unsign
from .exceptions import (
    ConcurrentUpdateError,
    ConfigurationError,
    SerializationError,
    SessionError,
    SessionTooLarge,
    StoreError,
    StoreUnavailable,
)
from .manager import SessionManager
from .middleware import SessionMiddleware
from .options import Options
from .session import CookieUpdate, Session, SessionFactory
from .store import JSONSerializer, Serializer, SessionStore, create_engine

__all__ = [
    "ConcurrentUpdateError",
    "ConfigurationError",
    "CookieUpdate",
    "JSONSerializer",
    "Options",
    "SerializationError",
    "Serializer",
    "Session",
    "SessionCookie",
    "SessionError",
    "SessionFactory",
    "SessionManager",
    "SessionMiddleware",
    "SessionStore",
    "SessionTooLarge",
    "StoreError",
    "StoreUnavailable",
    "create_engine",
    "generate_sid",
    "sign",
    "unsign",
]
__version__ = "0.1.0"
