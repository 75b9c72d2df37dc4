"""A fedora-messaging consumer callback that sends gilmsg's signed ACK.

One line turns an existing callback (a function, or a class whose
instances are called with each message) into one that ACKs::

    # mymodule.py, run as: fedora-messaging consume --callback=mymodule:callback
    from gilmsg_rs.fedora_messaging import acking

    def handle(message):
        ...                                     # unchanged

    callback = acking(handle, certname="ledger", config="/etc/gilmsg/ledger.toml")

The ACK is sent only after the wrapped callback **returned normally**, to
the message's ``reply_to`` (its publisher), signed as ``certname`` and
bound to the exact body by its digest; the broker confirms it before the
callback returns to fedora-messaging (which then ``basic.ack``s the
delivery). ``Nack``, ``Drop``, ``HaltConsumer`` and every other exception
propagate untouched, keep their meaning for fedora-messaging, and send no
ACK. Messages that ask for no ACK (plain fedora-messaging messages) pass
through as before.

If the ACK cannot be sent (the broker is unreachable), the wrapper raises
``Nack``: fedora-messaging requeues the message, it is redelivered and
handled again (at-least-once, as everywhere on AMQP: handlers must be
idempotent), and ACKed then. A message whose signature a gilmsg consumer
would refuse is handled by the callback as fedora-messaging delivers it,
but not acknowledged (logged as a warning).

``config``: the gilmsg configuration with ``amqp_url`` (a fedora-messaging
TOML with gilmsg's keys beside them works, see docs/amqp.md); default
``$GILMSG_CONFIG``, else ``/etc/gilmsg/gilmsg.toml``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import threading
from typing import Any, Callable, Optional, TypeVar, Union

from ._native import ExternalAcker
from .errors import BusError, MessageError

__all__ = ["acking"]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Union[Callable[[Any], Any], type])


class _Acker:
    """The process's ``ExternalAcker``, made on the first message (so that
    importing the callback module needs no broker)."""

    def __init__(self, config: Any, certname: str) -> None:
        self.config, self.certname = config, certname
        self.inner: Optional[ExternalAcker] = None
        self.lock = threading.Lock()

    def ack(self, message: Any) -> None:
        with self.lock:
            if self.inner is None:
                self.inner = ExternalAcker(self.config, self.certname)
        properties = getattr(message, "_properties", None)
        headers = dict(getattr(message, "_headers", None) or {})
        envelope = headers.get("gilmsg_envelope")
        if isinstance(envelope, bytes):
            envelope = envelope.decode("utf-8", "replace")
        if envelope is None:
            return  # not a gilmsg message: nothing asked for an ACK
        body = json.dumps(message.body, ensure_ascii=False).encode("utf-8")
        try:
            self.inner.ack(
                message.topic,
                body,
                envelope,
                getattr(message, "id", None),
                getattr(properties, "reply_to", None),
            )
        except MessageError as e:
            log.warning("gilmsg: message %s handled but not acknowledged: %s", getattr(message, "id", "?"), e)
        except BusError as e:
            from fedora_messaging.exceptions import Nack

            log.warning("gilmsg: ACK of %s not sent (%s); requeueing it", getattr(message, "id", "?"), e)
            raise Nack() from e


def acking(callback: C, *, certname: str, config: Any = None) -> C:
    """``callback`` (a function or a callable class, as fedora-messaging
    takes them) wrapped to send gilmsg's signed ACK, as ``certname``,
    after it returned normally; see the module docstring."""
    acker = _Acker(config, certname)
    if inspect.isclass(callback):
        original = callback

        def __call__(self: Any, message: Any) -> Any:
            result = original.__call__(self, message)
            acker.ack(message)
            return result

        wrapped_class = type(original.__name__, (original,), {
            "__call__": __call__,
            "__module__": original.__module__,
            "__qualname__": original.__qualname__,
            "__doc__": original.__doc__,
        })
        return wrapped_class  # type: ignore[return-value]

    @functools.wraps(callback)
    def wrapped(message: Any) -> Any:
        result = callback(message)
        acker.ack(message)
        return result

    return wrapped  # type: ignore[return-value]
