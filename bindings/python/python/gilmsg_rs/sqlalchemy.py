"""Publish on commit: collect messages during an SQLAlchemy transaction and
publish them, acknowledged, only after the commit succeeded; a rollback
sends nothing.

::

    from gilmsg_rs import Bus
    from gilmsg_rs.sqlalchemy import PublishOnCommit

    outbox = PublishOnCommit(Bus(config, modname="bodhi"))
    outbox.attach(Session)                      # a sessionmaker, Session class or session

    with Session() as session, session.begin():
        session.add(update)
        outbox.publish(session, "update.request", {"id": update.id}, ["ledger"], ack_timeout=30)
    # here: committed, and ledger acked the message (or PublishFailed was raised)

**When the publish fails after the commit** (a recipient does not ACK in
time, the bus is down, the message is refused): the database commit has
happened and stands; nothing can undo it. Every collected message is still
tried (one failure does not stop the others), then ``commit()`` raises
``PublishFailed`` with ``receipts`` (what was acknowledged) and ``failed``
(each ``(Pending, exception)``: a ``Timeout`` names who did not ACK). The
caller decides: retry the failed ones (``outbox.retry(e.failed)``), or
record them for a later retry. With ``on_failure=callable`` the failures go
to that callable instead and ``commit()`` returns normally. The receipts of
the last commit are in ``session.info["gilmsg_rs.receipts"]``.

Savepoints: messages collected inside a nested transaction that is rolled
back are kept until the outer transaction ends (only the outermost
rollback discards them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

from sqlalchemy import event

from ._native import Bus, Receipt
from .errors import GilmsgError

__all__ = ["PublishOnCommit", "Pending", "PublishFailed"]

_PENDING = "gilmsg_rs.pending"
_RECEIPTS = "gilmsg_rs.receipts"


@dataclass
class Pending:
    """One message waiting for the commit."""

    topic: str
    msg: Any
    recipients: List[str] = field(default_factory=list)
    ack_timeout: Optional[float] = None


class PublishFailed(GilmsgError):
    """Some messages of a committed transaction were not acknowledged. The
    commit stands. ``failed`` holds ``(Pending, exception)`` pairs,
    ``receipts`` the receipts of those that were."""

    def __init__(self, failed: List[Tuple[Pending, BaseException]], receipts: List[Receipt]) -> None:
        names = "; ".join(f"{p.topic}: {e}" for p, e in failed)
        super().__init__(f"committed, but {len(failed)} message(s) not acknowledged: {names}")
        self.failed = failed
        self.receipts = receipts


class PublishOnCommit:
    """Collects messages per session and publishes them after its commit."""

    def __init__(
        self,
        bus: Bus,
        *,
        on_failure: Optional[Callable[[List[Tuple[Pending, BaseException]], List[Receipt]], None]] = None,
    ) -> None:
        self.bus = bus
        self.on_failure = on_failure

    def attach(self, target: Any) -> None:
        """Listens on ``target`` (a ``sessionmaker``, a ``Session`` class or
        one session) for commits and rollbacks."""
        event.listen(target, "after_commit", self._after_commit)
        event.listen(target, "after_rollback", self._after_rollback)

    def publish(
        self,
        session: Any,
        topic: str,
        msg: Any,
        recipients: Sequence[str] = (),
        ack_timeout: Optional[float] = None,
    ) -> None:
        """Queues ``msg`` until ``session`` commits (nothing is sent now)."""
        if isinstance(recipients, str):
            raise TypeError("recipients must be a sequence of names, not a str")
        session.info.setdefault(_PENDING, []).append(
            Pending(topic, msg, list(recipients), ack_timeout))

    def pending(self, session: Any) -> List[Pending]:
        """What ``session`` would publish on commit."""
        return list(session.info.get(_PENDING, ()))

    def _after_rollback(self, session: Any) -> None:
        session.info.pop(_PENDING, None)

    def _after_commit(self, session: Any) -> None:
        pending = session.info.pop(_PENDING, [])
        if not pending:
            return
        receipts, failed = self.retry(pending)
        session.info[_RECEIPTS] = receipts
        if failed:
            if self.on_failure is not None:
                self.on_failure(failed, receipts)
            else:
                raise PublishFailed(failed, receipts)

    def retry(self, pending: Sequence[Any]) -> Tuple[List[Receipt], List[Tuple[Pending, BaseException]]]:
        """Publishes each of ``pending`` (``Pending`` or ``(Pending, error)``
        pairs as ``PublishFailed.failed`` holds them); the receipts and the
        failures."""
        receipts: List[Receipt] = []
        failed: List[Tuple[Pending, BaseException]] = []
        for item in pending:
            p = item[0] if isinstance(item, tuple) else item
            try:
                if p.recipients:
                    receipts.append(self.bus.publish(p.topic, p.msg, p.recipients, p.ack_timeout))
                else:
                    receipts.append(self.bus.send(p.topic, p.msg))
            except GilmsgError as e:
                failed.append((p, e))
        return receipts, failed
