"""Type stubs of the extension module gilmsg_rs._native (Rust, PyO3)."""

import asyncio
import os
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Sequence, Union

ConfigArg = Union[str, "os.PathLike[str]", Mapping[str, Any], None]

#: The longest timeout accepted anywhere, in seconds.
MAX_TIMEOUT: float
__version__: str

class Ack:
    """One recipient's ACK, as the publisher counted it."""

    @property
    def recipient(self) -> str:
        """Who acked (its certificate name)."""
    @property
    def after(self) -> float:
        """Seconds from the first send to the ACK."""
    @property
    def digest_checked(self) -> bool:
        """Whether the ACK named this body's digest (Python gilmsg's carry none)."""

class Receipt:
    """Proof that every named recipient acked one message."""

    @property
    def msg_id(self) -> str: ...
    @property
    def topic(self) -> str:
        """The full topic, ``<prefix>.<env>.<modname>.<topic>``."""
    @property
    def acks(self) -> List[Ack]:
        """One per recipient, in the order they were named."""
    @property
    def acked(self) -> List[str]:
        """The names of the recipients that acked."""
    @property
    def sends(self) -> int:
        """How many times the message was sent (1 unless something was lost)."""
    @property
    def elapsed(self) -> float:
        """Seconds from the publish to the last ACK."""

class Bus:
    """A publisher handle: one per process is enough; share it between
    threads. Blocking calls release the GIL while they wait.

    ``config``: a path (gilmsg TOML, fedmsg JSON, fedora-messaging TOML), a
    dict as ``fedmsg.config.load_config()`` returns it, or None for
    ``$GILMSG_CONFIG``, else ``/etc/gilmsg/gilmsg.toml``. ``amqp_url`` in it
    selects AMQP, else ZeroMQ. ``certname`` overrides the identity fedmsg's
    ``certnames`` rule picks; ``modname`` is the topic's module part
    (default: the executable's name).

    Raises ``ConfigError`` (names the file and the key), ``BusError``.
    """

    def __init__(
        self,
        config: ConfigArg = None,
        certname: Optional[str] = None,
        modname: Optional[str] = None,
        *,
        active: Optional[bool] = None,
        require_ack_digest: Optional[bool] = None,
    ) -> None: ...
    def publish(
        self,
        topic: str,
        msg: Any,
        recipients: Optional[Sequence[str]] = None,
        ack_timeout: Optional[float] = None,
    ) -> Receipt:
        """Publishes ``msg`` (anything ``json.dumps`` takes) and waits up to
        ``ack_timeout`` seconds (default: the config's) until each of
        ``recipients`` sent a valid signed ACK for it. Raises ``Timeout``
        (``.missing``, ``.acked``), ``MessageError`` (not JSON, too large,
        bad timeout), ``BusError``."""
    def send(self, topic: str, msg: Any) -> Receipt:
        """A plain publish: no ACKs; waits for a subscriber (ZeroMQ)."""
    def publish_async(
        self,
        topic: str,
        msg: Any,
        recipients: Optional[Sequence[str]] = None,
        ack_timeout: Optional[float] = None,
    ) -> "asyncio.Future[Receipt]":
        """``publish`` for asyncio: ``await bus.publish_async(...)``. Must be
        called with a running loop; any number may be in flight. Cancelling
        the future stops waiting for the ACKs."""
    @property
    def signer_name(self) -> Optional[str]: ...
    @property
    def bound_endpoints(self) -> List[str]: ...
    def stats(self) -> Dict[str, int]:
        """The publisher's counters (``publish.sent``, ``ack.accepted``, ...)."""
    def close(self) -> None:
        """Stops the handle; publishes still waiting fail with ``BusError``."""
    def __enter__(self) -> "Bus": ...
    def __exit__(self, *exc: object) -> bool: ...

class Delivery:
    """One message, delivered once. ``ack()`` after handling it; a delivery
    dropped or ``fail()``-ed is never acknowledged."""

    @property
    def topic(self) -> str: ...
    @property
    def msg_id(self) -> str: ...
    @property
    def signer(self) -> Optional[str]:
        """The verified signer (None when signatures are not validated)."""
    @property
    def wants_ack(self) -> bool: ...
    @property
    def msg(self) -> Any:
        """The payload."""
    @property
    def message(self) -> Dict[str, Any]:
        """The whole fedmsg envelope (``topic``, ``msg``, ``msg_id``, ...)."""
    def ack(self) -> None:
        """Marks it handled and sends the signed ACK if one was asked for."""
    def fail(self) -> None:
        """Marks it not handled: never acknowledged."""

class Consumer:
    """An ACK-sending consumer signing as ``certname``; iterate it with
    ``for`` (blocking, GIL released, Ctrl-C honoured) or ``async for``."""

    def __init__(
        self,
        config: ConfigArg = None,
        certname: Optional[str] = None,
        topics: Optional[Sequence[str]] = None,
        *,
        send_acks: bool = True,
        queue: int = 1024,
    ) -> None: ...
    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Waits until connected (ZeroMQ) or consuming (AMQP)."""
    def next(self, timeout: Optional[float] = None) -> Optional[Delivery]:
        """The next delivery, or None after ``timeout`` seconds or once closed."""
    def __iter__(self) -> Iterator[Delivery]: ...
    def __next__(self) -> Delivery: ...
    def __aiter__(self) -> AsyncIterator[Delivery]: ...
    def __anext__(self) -> "asyncio.Future[Delivery]": ...
    @property
    def signer_name(self) -> Optional[str]: ...
    def stats(self) -> Dict[str, int]: ...
    def close(self) -> Dict[str, int]:
        """Stops the consumer (flushing queued ACKs); its final counters."""
    def __enter__(self) -> "Consumer": ...
    def __exit__(self, *exc: object) -> bool: ...

class Canceller:
    """Internal: aborts the Rust task of a cancelled asyncio future."""

    def __call__(self, future: "asyncio.Future[Any]") -> None: ...

class ExternalAcker:
    """Signed ACKs for messages another AMQP client (fedora-messaging)
    consumed; see ``gilmsg_rs.fedora_messaging``."""

    def __init__(self, config: ConfigArg, certname: str) -> None: ...
    def ack(
        self,
        routing_key: str,
        body: bytes,
        envelope_header: Optional[str] = None,
        message_id: Optional[str] = None,
        reply_to: Optional[str] = None,
    ) -> Optional[str]:
        """Checks the message, publishes its ACK to ``reply_to`` and waits
        for the broker's confirm; the acked msg_id, or None when it asked
        for no ACK. ``MessageError``: refused; ``BusError``: not sent."""
