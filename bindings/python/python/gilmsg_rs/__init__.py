"""gilmsg_rs: acknowledged publishing from Python, on gilmsg's Rust core.

A critical producer names the recipients that must get a message;
``Bus.publish`` returns a ``Receipt`` only when each of them sent back a
valid signed ACK for that very message, and otherwise raises ``Timeout``
naming who did not. Works on a fedmsg ZeroMQ bus and on AMQP
(fedora-messaging's RabbitMQ), chosen by the configuration (``amqp_url``).

>>> bus = gilmsg_rs.Bus("/etc/gilmsg/gilmsg.toml", modname="billing")   # doctest: +SKIP
>>> bus.publish("invoice.paid", {"id": 42}, ["ledger"], ack_timeout=3)    # doctest: +SKIP
Receipt(msg_id='2026-...', topic='org.example.prod.billing.invoice.paid', acked=['ledger'], ...)

Also here: ``gilmsg_rs.compat`` (gilmsg 0.1.2's API), ``gilmsg_rs.fedora_messaging``
(a callback wrapper that ACKs), ``gilmsg_rs.sqlalchemy`` (publish on commit).
See docs/python.md.
"""

from ._native import MAX_TIMEOUT, Ack, Bus, Consumer, Delivery, Receipt, __version__
from .errors import BusError, ConfigError, GilmsgError, MessageError, Timeout

__all__ = [
    "Ack",
    "Bus",
    "BusError",
    "ConfigError",
    "Consumer",
    "Delivery",
    "GilmsgError",
    "MAX_TIMEOUT",
    "MessageError",
    "Receipt",
    "Timeout",
    "__version__",
]
