"""gilmsg_rs.compat: gilmsg 0.1.2's API, one test per defect of Python
gilmsg listed in docs/interop.md ("Python defects we do not share"),
showing ours behaves right."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from gilmsg_rs import compat as gilmsg
from buses import got_json


def config(bus) -> dict:
    """compat's ``**config``: fedmsg's config dict, signing as py-pub."""
    return dict(bus.fedmsg_dict(), certname="py-pub")


def test_defect_1_each_publish_has_its_own_acks(zmq_bus):
    """gilmsg 0.1.2: one class-level ACK list for every publish, so the
    second publish succeeded on the first one's ACKs, and the README's
    pattern (publish twice) raised a false timeout."""
    a = zmq_bus.rust_consumer("rust-a")
    cfg = config(zmq_bus)
    # The README pattern, twice in a row: both acked.
    for n in range(2):
        receipt = gilmsg.publish(topic="t", msg={"n": n}, modname="billing",
                                 recipients=["rust-a"], ack_timeout=20, **cfg)
        assert receipt.acked == ["rust-a"]
    # Recipient gone: the next publish must fail, whatever earlier ACKs said.
    a.kill()
    with pytest.raises(gilmsg.Timeout) as caught:
        gilmsg.publish(topic="t", msg={"n": 3}, modname="billing",
                       recipients=["rust-a"], ack_timeout=1, **cfg)
    assert caught.value.missing == ["rust-a"]


def test_defect_2_timeout_names_missing_and_acked(zmq_bus):
    """gilmsg 0.1.2: 'Received X acks from Y of Z systems in N seconds'."""
    zmq_bus.rust_consumer("rust-a")
    with pytest.raises(gilmsg.Timeout) as caught:
        gilmsg.publish(topic="t", msg={}, modname="billing", recipients=["rust-a", "offline"],
                       ack_timeout=2, **config(zmq_bus))
    e = caught.value
    assert (e.missing, e.acked) == (["offline"], ["rust-a"])
    assert "from offline (acked: rust-a)" in str(e)
    assert e.waited == 2.0


def test_defect_3_nothing_hangs_after_a_timeout(zmq_bus, tmp_path):
    """gilmsg 0.1.2: a non-daemon listener thread blocked in poll() kept
    gilmsg-logger alive after the timeout until some message arrived."""
    script = tmp_path / "publish.py"
    script.write_text(f"""
import sys
from gilmsg_rs import compat as gilmsg
try:
    gilmsg.publish(topic="t", msg={{}}, modname="billing", recipients=["offline"],
                   ack_timeout=1, config_path={str(zmq_bus.config_path)!r}, certname="py-pub")
except gilmsg.Timeout as e:
    print("timeout:", e)
    sys.exit(1)
""")
    started = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - started
    assert out.returncode == 1, out
    assert "from offline" in out.stdout
    assert took < 15, f"the process took {took:.1f}s to exit after a 1 s timeout"


def test_defect_4_our_consumer_acks(zmq_bus):
    """gilmsg 0.1.2: GilmsgConsumer (the hub consumer) never ACKed. Ours,
    compat.tail_messages, ACKs every message its loop handled."""
    cfg = config(zmq_bus)
    seen = []
    ready = threading.Event()

    def consume():
        tail = gilmsg.tail_messages(certname="rust-c", config_path=str(zmq_bus.config_path))
        ready.set()
        for name, endpoint, topic, message in tail:
            seen.append(message)
            if message["msg"] == {"last": True}:
                break
        tail.close()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    ready.wait(10)
    # The consumer's subscription may still be on its way: our publisher
    # re-sends until acked, so no probe is needed.
    receipt = gilmsg.publish(topic="t", msg={"first": True}, modname="billing",
                             recipients=["rust-c"], ack_timeout=30, **cfg)
    assert receipt.acked == ["rust-c"]
    # The loop breaks on this one instead of asking for the next: it was
    # never handed back as handled, so it is not acknowledged (the promise:
    # an ACK means the handler finished).
    with pytest.raises(gilmsg.Timeout) as caught:
        gilmsg.publish(topic="t", msg={"last": True}, modname="billing",
                       recipients=["rust-c"], ack_timeout=3, **cfg)
    assert caught.value.missing == ["rust-c"]
    t.join(30)
    assert [m["msg"] for m in seen] == [{"first": True}, {"last": True}]


def test_defect_5_validating_python_consumers_ack_ours(zmq_bus, peers):
    """gilmsg 0.1.2 added gilmsg_version after signing, so validating
    consumers dropped its messages. Ours is signed: Python gilmsg consumers
    with validate_signatures=True ACK them."""
    py_a = zmq_bus.python_consumer("py-a")
    receipt = gilmsg.publish(topic="t", msg={"to": "py-a"}, modname="billing", recipients=["py-a"],
                             ack_timeout=30, **config(zmq_bus))
    assert receipt.acked == ["py-a"]
    got = got_json(py_a, lambda m: m["body"]["msg_id"] == receipt.msg_id, prefix="peers: got ")
    assert got["body"]["gilmsg_version"].startswith("gilmsg-rs/")


def test_defect_6_bind_mode_publish_works(zmq_bus, tmp_path):
    """gilmsg 0.1.2: with active=False the ACK listener tried to bind the
    publisher's endpoint a second time and publish ended in AssertionError.
    Ours binds once; a consumer connects to it directly, no relay."""
    from buses import free_port
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    endpoints = f'relay_outbound = ["{zmq_bus.outbound}"]\n"billing-pub" = ["{endpoint}"]'
    # The consumer connects to the relay and to the publisher's endpoint;
    # the publisher binds its endpoint (name, active = false) and hears the
    # ACKs through the relay's outbound.
    consumer_config = tmp_path / "consumer.toml"
    consumer_config.write_text(zmq_bus.toml().replace(f'relay_outbound = ["{zmq_bus.outbound}"]', endpoints))
    publisher_config = tmp_path / "publisher.toml"
    publisher_config.write_text(zmq_bus.toml().replace(f'relay_outbound = ["{zmq_bus.outbound}"]', endpoints)
                                .replace("active = true", 'active = false\nname = "billing-pub"'))
    zmq_bus.rust_consumer("rust-a", config=consumer_config)
    receipt = gilmsg.publish(topic="t", msg={"bind": True}, modname="billing", recipients=["rust-a"],
                             ack_timeout=20, config_path=str(publisher_config), certname="py-pub")
    assert receipt.acked == ["rust-a"]


def test_defect_7_acks_from_others_do_not_count(zmq_bus):
    """gilmsg 0.1.2 consumers ACK everything, and its publisher counted any
    valid ACK signed by a named recipient. Ours counts only ACKs from the
    named recipients for this exact body: rust-c's ACK does not stand in
    for the offline recipient."""
    zmq_bus.rust_consumer("rust-a")
    c = zmq_bus.rust_consumer("rust-c")
    with pytest.raises(gilmsg.Timeout) as caught:
        gilmsg.publish(topic="t", msg={"n": 7}, modname="billing", recipients=["rust-a", "offline"],
                       ack_timeout=2, **config(zmq_bus))
    assert caught.value.missing == ["offline"]
    assert caught.value.acked == ["rust-a"]
    # rust-c did get (and ACK) the message: its ACK was simply not counted.
    got_json(c, lambda m: m["msg_id"] == caught.value.msg_id)
