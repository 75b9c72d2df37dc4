"""Publish on commit with SQLAlchemy on SQLite: commit publishes (and waits
for the ACKs), rollback sends nothing, a failure after the commit leaves the
commit standing and says what was not acknowledged."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, String, create_engine, select
from sqlalchemy.orm import Session, declarative_base, sessionmaker

import gilmsg_rs
from buses import got_json
from gilmsg_rs.sqlalchemy import PublishFailed, PublishOnCommit

Base = declarative_base()


class Update(Base):
    __tablename__ = "updates"
    id = Column(Integer, primary_key=True)
    title = Column(String)


@pytest.fixture
def db(tmp_path, zmq_bus):
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    bus = gilmsg_rs.Bus(zmq_bus.config_path, certname="py-pub", modname="bodhi")
    outbox = PublishOnCommit(bus)
    outbox.attach(factory)
    yield factory, outbox
    bus.close()


def test_commit_publishes_rollback_does_not(zmq_bus, db):
    factory, outbox = db
    a = zmq_bus.rust_consumer("rust-a")
    with factory() as session:
        session.add(Update(id=1, title="rolled back"))
        outbox.publish(session, "update", {"id": 1, "title": "rolled back"}, ["rust-a"], 20)
        assert len(outbox.pending(session)) == 1
        session.rollback()
        assert outbox.pending(session) == []
    with factory() as session:
        with session.begin():
            session.add(Update(id=2, title="committed"))
            outbox.publish(session, "update", {"id": 2, "title": "committed"}, ["rust-a"], 20)
        receipts = session.info["gilmsg_rs.receipts"]
    assert [r.acked for r in receipts] == [["rust-a"]]
    # The first message the consumer ever saw is the committed one: the
    # rolled-back one was never sent.
    first = got_json(a, lambda m: True)
    assert first["body"]["msg"] == {"id": 2, "title": "committed"}


def test_failure_after_commit_keeps_the_commit(zmq_bus, db):
    factory, outbox = db
    zmq_bus.rust_consumer("rust-a")
    with factory() as session:
        session.add(Update(id=3, title="x"))
        outbox.publish(session, "update", {"id": 3}, ["rust-a"], 20)
        outbox.publish(session, "update", {"id": 3, "to": "offline"}, ["offline"], 1)
        with pytest.raises(PublishFailed) as caught:
            session.commit()
    e = caught.value
    assert [r.acked for r in e.receipts] == [["rust-a"]]
    [(pending, error)] = e.failed
    assert pending.recipients == ["offline"]
    assert isinstance(error, gilmsg_rs.Timeout) and error.missing == ["offline"]
    with Session(factory.kw["bind"]) as check:
        assert check.scalars(select(Update.title).where(Update.id == 3)).all() == ["x"]
