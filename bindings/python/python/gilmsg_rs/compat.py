"""gilmsg 0.1.2's API on gilmsg_rs: port a service by changing one import::

    import gilmsg                          # before
    from gilmsg_rs import compat as gilmsg # after

    gilmsg.publish(topic="update", msg=body, modname="bodhi",
                   recipients=["ledger"], ack_timeout=3,
                   **fedmsg.config.load_config())

``publish``, ``tail_messages``, ``init`` and ``Timeout`` behave as gilmsg's
do, without its defects (docs/interop.md, "Python defects we do not
share"): each publish has its own ACK state (no success on an earlier
publish's ACKs), ``Timeout`` names the missing and the acked recipients,
nothing hangs after a timeout, ``gilmsg_version`` is signed, bind mode
(``active=False``) works, ACKs from identities that were not named are not
counted, and ``tail_messages`` ACKs a message only when the loop body asks for
the next one (the message was handled), never one it raised or broke on.

The ``**config`` keywords are fedmsg's configuration dict (what
``fedmsg.config.load_config()`` returns); none at all means
``$GILMSG_CONFIG``, else ``/etc/gilmsg/gilmsg.toml``. A ``config_path=``
keyword names a gilmsg TOML (or fedmsg JSON) file instead. One ``Bus`` per
(configuration, modname, certname) is kept for the life of the process,
shared by every thread, so the second publish does not pay for sockets and
subscriptions again.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from ._native import Bus, Consumer, Receipt
from .errors import Timeout as _Timeout

__all__ = ["init", "publish", "tail_messages", "Timeout"]

#: gilmsg's exception name; the same class as ``gilmsg_rs.Timeout``.
Timeout = _Timeout

_buses: Dict[Tuple[str, Optional[str], Optional[str], Optional[bool]], Bus] = {}
_buses_lock = threading.Lock()


def _config_arg(config: Dict[str, Any]) -> Any:
    path = config.pop("config_path", None)
    if path is not None:
        return path
    return config or None


def _bus(config: Dict[str, Any], modname: Optional[str], certname: Optional[str]) -> Bus:
    cfg = _config_arg(dict(config))
    active = config.get("active")
    key = (json.dumps(cfg, sort_keys=True, default=repr), modname, certname, active)
    with _buses_lock:
        bus = _buses.get(key)
        if bus is None:
            bus = Bus(cfg, certname=certname, modname=modname, active=active)
            _buses[key] = bus
        return bus


def init(**config: Any) -> None:
    """Builds (and keeps) the publisher for ``config`` now rather than on
    the first publish, as ``fedmsg.init`` does."""
    _bus(config, config.pop("name", None), config.get("cert_prefix"))


def publish(
    topic: Optional[str] = None,
    msg: Any = None,
    modname: Optional[str] = None,
    recipients: Optional[Sequence[str]] = None,
    ack_timeout: float = 0.25,
    **config: Any,
) -> Optional[Receipt]:
    """Publishes ``msg`` on ``<prefix>.<env>.<modname>.<topic>`` and waits up
    to ``ack_timeout`` seconds until every one of ``recipients`` acked it;
    raises ``Timeout`` (``.missing``, ``.acked``) otherwise. Without
    recipients it is a plain fedmsg publish (gilmsg 0.1.2 logs a warning
    and calls ``fedmsg.publish``). Returns the ``Receipt`` (gilmsg 0.1.2
    returned None). ``certname=`` picks the signing identity; otherwise
    fedmsg's ``certnames`` rule does."""
    if topic is None:
        raise TypeError("publish() needs a topic")
    certname = config.pop("certname", None)
    bus = _bus(config, modname, certname)
    if not recipients:
        return bus.send(topic, msg)
    if isinstance(recipients, str):
        recipients = [recipients]
    return bus.publish(topic, msg, list(recipients), ack_timeout)


def tail_messages(
    topic: str = "", passive: bool = False, **config: Any
) -> Iterator[Tuple[str, str, str, Dict[str, Any]]]:
    """Yields ``(name, endpoint, topic, message)`` as fedmsg's
    ``tail_messages`` does (``message`` is the whole envelope: ``msg``,
    ``msg_id``, ``topic``, ...), ACKing each message that asks for one
    *after* the loop body returned for it, i.e. when the next message is
    asked for. A body that raises, or ``break``s, leaves that message
    unacknowledged (gilmsg 0.1.2 acked before the body ran). ``certname=`` names the identity
    ACKs are signed with (else fedmsg's ``certnames`` rule for
    ``name``)."""
    if passive:
        raise ValueError("passive (bind-mode) tailing is not supported; use active consumers")
    certname = config.pop("certname", None)
    name = config.get("name", "gilmsg_rs")
    topics = [topic] if topic else None
    consumer = Consumer(_config_arg(dict(config)), certname=certname, topics=topics)
    try:
        for delivery in consumer:
            yield name, "", delivery.topic, delivery.message
            delivery.ack()
    finally:
        consumer.close()
