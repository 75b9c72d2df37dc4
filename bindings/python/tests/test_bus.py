"""Bus and Consumer on real buses: ZeroMQ (gilmsg-relay, gilmsg-consumer)
and AMQP (a RabbitMQ node), recipients in Rust and in Python gilmsg 0.1.2."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import gilmsg_rs
from buses import got_json


def test_publish_is_acked_by_rust_consumers(any_bus):
    a = any_bus.rust_consumer("rust-a")
    b = any_bus.rust_consumer("rust-b")
    body = {"id": 42, "big": 2**70, "text": "é😀", "float": 0.1}
    with gilmsg_rs.Bus(any_bus.config_path, certname="py-pub", modname="billing") as bus:
        receipt = bus.publish("invoice.paid", body, ["rust-a", "rust-b"], 20)
    assert sorted(receipt.acked) == ["rust-a", "rust-b"]
    assert all(ack.digest_checked for ack in receipt.acks), receipt
    assert receipt.topic.endswith(".billing.invoice.paid")
    for consumer in (a, b):
        got = got_json(consumer, lambda m: m["msg_id"] == receipt.msg_id)
        assert got["body"]["msg"] == body, got
        assert got["signer"] == "py-pub"


def test_timeout_names_the_offline_recipient(any_bus):
    any_bus.rust_consumer("rust-a")
    bus = gilmsg_rs.Bus(any_bus.config_path, certname="py-pub", modname="billing")
    with pytest.raises(gilmsg_rs.Timeout) as caught:
        bus.publish("invoice.paid", {"id": 1}, ["rust-a", "offline"], 2)
    e = caught.value
    assert e.missing == ["offline"]
    assert e.acked == ["rust-a"]
    assert "offline" in str(e) and "acked: rust-a" in str(e)
    assert isinstance(e, gilmsg_rs.GilmsgError)


def test_publish_to_python_gilmsg_consumers(zmq_bus, peers):
    a = zmq_bus.python_consumer("py-a")
    b = zmq_bus.python_consumer("py-b")
    bus = gilmsg_rs.Bus(zmq_bus.config_path, certname="py-pub", modname="billing")
    receipt = bus.publish("invoice.paid", {"to": "python"}, ["py-a", "py-b"], 30)
    assert sorted(receipt.acked) == ["py-a", "py-b"]
    # Python gilmsg's ACKs carry no digest.
    assert not any(ack.digest_checked for ack in receipt.acks)
    for consumer in (a, b):
        got_json(consumer, lambda m: m["body"]["msg_id"] == receipt.msg_id, prefix="peers: got ")
    b.kill()
    with pytest.raises(gilmsg_rs.Timeout) as caught:
        bus.publish("invoice.paid", {"to": "python", "n": 2}, ["py-a", "py-b"], 5)
    assert caught.value.missing == ["py-b"]
    assert caught.value.acked == ["py-a"]


def test_send_is_a_plain_publish(any_bus):
    a = any_bus.rust_consumer("rust-a")
    bus = gilmsg_rs.Bus(any_bus.config_path, certname="py-pub", modname="billing")
    receipt = bus.send("plain", {"n": 1})
    assert receipt.acks == []
    got = got_json(a, lambda m: m["msg_id"] == receipt.msg_id)
    assert got["body"]["msg"] == {"n": 1}


def test_publish_async_many_in_flight(any_bus):
    any_bus.rust_consumer("rust-a")
    bus = gilmsg_rs.Bus(any_bus.config_path, certname="py-pub", modname="billing")

    async def main():
        return await asyncio.gather(*(
            bus.publish_async("batch", {"n": n}, ["rust-a"], 30) for n in range(200)))

    receipts = asyncio.run(main())
    assert len({r.msg_id for r in receipts}) == 200
    assert all(r.acked == ["rust-a"] for r in receipts)


def test_publish_async_timeout_and_cancel(zmq_bus):
    zmq_bus.rust_consumer("rust-a")
    bus = gilmsg_rs.Bus(zmq_bus.config_path, certname="py-pub", modname="billing")

    async def main():
        with pytest.raises(gilmsg_rs.Timeout) as caught:
            await bus.publish_async("t", {}, ["rust-a", "offline"], 1)
        assert caught.value.missing == ["offline"]
        pending = bus.publish_async("t", {}, ["offline"], 30)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        # The handle still works after a cancelled publish.
        return await bus.publish_async("t", {}, ["rust-a"], 30)

    assert asyncio.run(main()).acked == ["rust-a"]


def test_one_bus_shared_by_threads_and_gil_released(zmq_bus):
    zmq_bus.rust_consumer("rust-a")
    bus = gilmsg_rs.Bus(zmq_bus.config_path, certname="py-pub", modname="billing")
    results, errors = [], []

    def worker(t):
        try:
            for n in range(20):
                results.append(bus.publish("threads", {"t": t, "n": n}, ["rust-a"], 30))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len({r.msg_id for r in results}) == 80

    # While one thread waits 1.5 s for an ACK that never comes, another
    # runs Python code: the GIL is released during the wait.
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            stop.wait(0.01)

    t = threading.Thread(target=ticker)
    t.start()
    started = time.monotonic()
    with pytest.raises(gilmsg_rs.Timeout):
        bus.publish("gil", {}, ["offline"], 1.5)
    stop.set()
    t.join()
    during = [x for x in ticks if started + 0.2 < x < started + 1.3]
    assert len(during) > 20, f"only {len(during)} ticks while publish waited"


def test_consumer_iterates_and_acks(any_bus):
    consumer = gilmsg_rs.Consumer(any_bus.config_path, "rust-c")
    assert consumer.wait_ready(30)
    bus = gilmsg_rs.Bus(any_bus.config_path, certname="py-pub", modname="billing")
    outcome = {}

    def publish():
        try:
            outcome["receipt"] = bus.publish("to.python", {"hello": "consumer"}, ["rust-c"], 30)
        except Exception as e:  # noqa: BLE001
            outcome["error"] = e

    t = threading.Thread(target=publish)
    t.start()
    for delivery in consumer:
        if delivery.msg == {"hello": "consumer"}:
            assert delivery.signer == "py-pub"
            assert delivery.wants_ack
            assert delivery.message["msg_id"] == delivery.msg_id
            delivery.ack()
            break
    t.join(60)
    assert outcome.get("receipt") is not None, outcome
    assert outcome["receipt"].acked == ["rust-c"]
    stats = consumer.close()
    assert stats.get("ack.sent", 0) >= 1, stats


def test_a_delivery_not_acked_is_never_acknowledged(zmq_bus):
    consumer = gilmsg_rs.Consumer(zmq_bus.config_path, "rust-c")
    assert consumer.wait_ready(30)
    bus = gilmsg_rs.Bus(zmq_bus.config_path, certname="py-pub", modname="billing")
    errors = []

    def publish():
        try:
            bus.publish("dropped", {"n": 1}, ["rust-c"], 2)
        except gilmsg_rs.Timeout as e:
            errors.append(e)

    t = threading.Thread(target=publish)
    t.start()
    d = consumer.next(timeout=30)
    assert d is not None and d.msg == {"n": 1}
    d.fail()
    del d
    t.join(30)
    assert errors and errors[0].missing == ["rust-c"]
    consumer.close()


def test_consumer_async_iteration(any_bus):
    consumer = gilmsg_rs.Consumer(any_bus.config_path, "rust-c")
    assert consumer.wait_ready(30)
    bus = gilmsg_rs.Bus(any_bus.config_path, certname="py-pub", modname="billing")

    async def main():
        publishes = [bus.publish_async("aio", {"n": n}, ["rust-c"], 30) for n in range(5)]
        seen = set()
        async for delivery in consumer:
            seen.add(delivery.msg["n"])
            delivery.ack()
            if len(seen) == 5:
                break
        return await asyncio.gather(*publishes)

    receipts = asyncio.run(main())
    assert all(r.acked == ["rust-c"] for r in receipts)
    consumer.close()
    assert consumer.next(timeout=0.1) is None


def test_close_ends_a_waiting_async_iteration(zmq_bus):
    consumer = gilmsg_rs.Consumer(zmq_bus.config_path, "rust-c")
    assert consumer.wait_ready(30)

    async def main():
        async def iterate():
            return [d async for d in consumer]

        task = asyncio.ensure_future(iterate())
        await asyncio.sleep(0)  # let the iteration start waiting
        await asyncio.get_running_loop().run_in_executor(None, consumer.close)
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == []
