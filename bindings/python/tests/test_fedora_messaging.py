"""The fedora-messaging callback wrapper under `fedora-messaging consume`
(3.9.1) against the test RabbitMQ: an ACK after the callback returned
normally, none after Nack, Drop or an exception."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

import gilmsg_rs

pika = pytest.importorskip("pika")

CALLBACK = '''
import json, os
from fedora_messaging.exceptions import Drop, HaltConsumer, Nack
from gilmsg_rs.fedora_messaging import acking

def handle(message):
    what = message.body["do"]
    path = os.environ["GILMSG_FM_OUT"]
    before = 0
    if os.path.exists(path):
        with open(path) as f:
            before = sum(1 for line in f if json.loads(line)["id"] == message.id)
    with open(path, "a") as out:
        out.write(json.dumps({"do": what, "id": message.id, "n": before + 1}) + "\\n")
    if before:
        # A redelivery (after Nack, or of the message whose exception
        # halted the previous consumer): dropped, so the test ends.
        raise Drop()
    if what == "drop":
        raise Drop()
    if what == "nack":
        raise Nack()
    if what == "halt":
        raise HaltConsumer(exit_code=0, requeue=False)
    if what == "raise":
        raise RuntimeError("the handler failed")

callback = acking(handle, certname="py-a", config=os.environ["GILMSG_TEST_CONFIG"])
'''


def wait_record(path: Path, match, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if match(record):
                    return record
        time.sleep(0.05)  # pacing a bounded poll of a file, not a readiness wait
    raise AssertionError(f"no such record in {path}: {path.read_text() if path.exists() else '(none)'}")


def test_wrapper_acks_after_success_only(amqp_bus, tmp_path, procs):
    fm = shutil.which("fedora-messaging", path=str(Path(sys.executable).parent))
    assert fm, "fedora-messaging is not installed in the test venv"
    queue, binding = "fm_ledger", "org.example.dev.billing.#"
    # The queue exists before anything is published (the publish is
    # mandatory), so every message waits for the consumer however long
    # fedora-messaging takes to start.
    connection = pika.BlockingConnection(pika.URLParameters(amqp_bus.url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, "amq.topic", binding)
    connection.close()
    (tmp_path / "fm_ack.py").write_text(CALLBACK)
    (tmp_path / "fm.toml").write_text(f'''amqp_url = "{amqp_bus.url}"
publish_exchange = "amq.topic"
topic_prefix = ""
callback = "fm_ack:callback"

[queues.{queue}]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "{queue}"
exchange = "amq.topic"
routing_keys = ["{binding}"]

[qos]
prefetch_size = 0
prefetch_count = 1
''')
    record = tmp_path / "recorded.jsonl"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), GILMSG_FM_OUT=str(record),
               GILMSG_TEST_CONFIG=str(amqp_bus.config_path), HOME=str(tmp_path))
    consumer = procs.start("fedora-messaging consume", [fm, "--conf", tmp_path / "fm.toml", "consume"],
                           cwd=tmp_path, env=env)
    bus = gilmsg_rs.Bus(amqp_bus.config_path, certname="py-pub", modname="billing")

    receipt = bus.publish("update", {"do": "ok"}, ["py-a"], 60)
    assert receipt.acked == ["py-a"] and receipt.acks[0].digest_checked
    wait_record(record, lambda r: r["id"] == receipt.msg_id)

    for what in ("drop", "nack", "raise"):
        with pytest.raises(gilmsg_rs.Timeout) as caught:
            bus.publish("update", {"do": what}, ["py-a"], 3)
        assert caught.value.missing == ["py-a"], what
        # The handler did run: it was its verdict that kept the ACK back.
        wait_record(record, lambda r: r["id"] == caught.value.msg_id)
    # An unexpected exception halts fedora-messaging's consumer (its own
    # rule); the wrapper did not change that.
    consumer.popen.wait(timeout=60)
    # HaltConsumer too keeps its meaning: a second consumer halts on it,
    # and no ACK is sent for it.
    consumer = procs.start("fedora-messaging consume 2", [fm, "--conf", tmp_path / "fm.toml", "consume"],
                           cwd=tmp_path, env=env)
    with pytest.raises(gilmsg_rs.Timeout) as caught:
        bus.publish("update", {"do": "halt"}, ["py-a"], 5)
    assert caught.value.missing == ["py-a"]
    wait_record(record, lambda r: r["id"] == caught.value.msg_id)
    consumer.popen.wait(timeout=60)
    bus.close()


def test_external_acker_refuses_what_a_consumer_would(amqp_bus):
    """The ACK is bound to the body: a body changed after signing is
    refused (no ACK), a message without gilmsg's envelope asks for none,
    and the untouched one is acked to its publisher."""
    from gilmsg_rs._native import ExternalAcker

    connection = pika.BlockingConnection(pika.URLParameters(amqp_bus.url))
    channel = connection.channel()
    channel.queue_declare("raw", durable=False, exclusive=True)
    channel.queue_bind("raw", "amq.topic", "org.example.dev.billing.#")
    bus = gilmsg_rs.Bus(amqp_bus.config_path, certname="py-pub", modname="billing")
    outcome = {}
    t = threading.Thread(target=lambda: outcome.setdefault(
        "r", _try(lambda: bus.publish("update", {"n": 1}, ["py-a"], 20))))
    t.start()
    deadline = time.monotonic() + 20
    method = None
    while method is None and time.monotonic() < deadline:
        method, properties, body = channel.basic_get("raw", auto_ack=True)
        if method is None:
            time.sleep(0.05)  # pacing a bounded poll of the queue
    assert method is not None, "the message never reached the queue"
    envelope = properties.headers["gilmsg_envelope"]
    envelope = envelope.decode() if isinstance(envelope, bytes) else envelope
    acker = ExternalAcker(str(amqp_bus.config_path), "py-a")
    with pytest.raises(gilmsg_rs.MessageError, match="refused"):
        acker.ack(method.routing_key, json.dumps({"n": 2}).encode(), envelope,
                  properties.message_id, properties.reply_to)
    assert acker.ack(method.routing_key, body, None, properties.message_id, None) is None
    acked = acker.ack(method.routing_key, body, envelope, properties.message_id, properties.reply_to)
    t.join(30)
    receipt = outcome["r"]
    assert not isinstance(receipt, Exception), receipt
    assert acked == receipt.msg_id and receipt.acked == ["py-a"] and receipt.acks[0].digest_checked
    connection.close()
    bus.close()


def _try(f):
    try:
        return f()
    except Exception as e:  # noqa: BLE001 - returned to the test thread
        return e
