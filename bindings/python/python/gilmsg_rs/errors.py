"""The exceptions of gilmsg_rs: one base class, ``GilmsgError``, and one
subclass per kind of failure a caller can act on.

::

    GilmsgError
    ├── Timeout        not every recipient acked in time (names who did not)
    ├── ConfigError    the configuration is unusable (names the file and the key)
    ├── MessageError   the message or an argument cannot be used (also a
    │                  ValueError and a TypeError, as json.dumps would raise)
    └── BusError       the transport failed: sockets, the broker, a closed handle

Wrong argument *types* (``recipients=42``) raise Python's own ``TypeError``
before anything reaches the library. No Rust panic reaches Python: one
would surface as ``BusError`` ("internal error").
"""

from __future__ import annotations

from typing import List, Optional, Sequence

__all__ = ["GilmsgError", "Timeout", "ConfigError", "MessageError", "BusError"]


class GilmsgError(Exception):
    """Base class of every error gilmsg_rs raises."""


class Timeout(GilmsgError):
    """An acknowledged publish did not hear from every recipient in time.

    ``missing`` names the recipients that did not ACK, in the order they
    were named; ``acked`` those that did (``acks`` has their ``Ack``
    records). ``str(e)`` names both, e.g. ``no ACK within 3s from b
    (acked: a) for <msg_id> on <topic>``.
    """

    def __init__(
        self,
        message: str,
        *,
        msg_id: str = "",
        topic: str = "",
        missing: Sequence[str] = (),
        acks: Sequence[object] = (),
        sends: int = 0,
        waited: float = 0.0,
        broker: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.msg_id = msg_id
        self.topic = topic
        self.missing: List[str] = list(missing)
        self.acks = list(acks)
        self.acked: List[str] = [getattr(a, "recipient", str(a)) for a in self.acks]
        self.sends = sends
        self.waited = waited
        self.broker = broker


class ConfigError(GilmsgError):
    """The configuration could not be read or is unusable.

    ``path`` is the file (None for a dict or when no file was found) and
    ``key`` the key path (``endpoints.relay_outbound[1]``) when one key is
    at fault; the message names both.
    """

    def __init__(self, message: str, *, path: Optional[str] = None, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class MessageError(GilmsgError, ValueError, TypeError):
    """The message or an argument cannot be used: a msg that is not JSON
    (a set, NaN, a cycle), one over ``max_message_size`` or failing its
    topic's schema, a negative or huge timeout, an empty recipient name."""


class BusError(GilmsgError):
    """The bus failed: a socket or broker error, no subscriber for a plain
    send, a message no queue would receive, a closed handle."""
