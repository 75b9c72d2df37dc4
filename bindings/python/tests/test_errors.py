"""Bad input gets a clear Python exception, never a crash: wrong types for
every argument, msgs that are not JSON, missing or broken configs, huge,
negative and non-finite timeouts. No Rust panic reaches Python."""

from __future__ import annotations

import asyncio
import math

import pytest

import gilmsg_rs
from gilmsg_rs import BusError, ConfigError, GilmsgError, MessageError, Timeout


def test_hierarchy():
    for cls in (Timeout, ConfigError, MessageError, BusError):
        assert issubclass(cls, GilmsgError)
    assert issubclass(GilmsgError, Exception)
    # Code that caught json.dumps' errors keeps working.
    assert issubclass(MessageError, TypeError) and issubclass(MessageError, ValueError)


def test_missing_config_file_names_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        gilmsg_rs.Bus(missing)
    assert str(missing) in str(caught.value)
    with pytest.raises(ConfigError):
        gilmsg_rs.Consumer(str(missing), "rust-a")


def test_bad_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('ack_timeout = "soon"\n')
    with pytest.raises(ConfigError) as caught:
        gilmsg_rs.Bus(path)
    assert caught.value.key == "ack_timeout", caught.value
    assert caught.value.path == str(path)
    assert "ack_timeout" in str(caught.value) and str(path) in str(caught.value)


def test_config_of_the_wrong_type():
    with pytest.raises(TypeError, match="config must be"):
        gilmsg_rs.Bus(42)


def test_missing_identity_is_a_config_error(zmq_bus):
    with pytest.raises(ConfigError) as caught:
        gilmsg_rs.Bus(zmq_bus.config_path, certname="nobody")
    assert "nobody" in str(caught.value)


@pytest.fixture
def bus(zmq_bus):
    b = gilmsg_rs.Bus(zmq_bus.config_path, certname="py-pub", modname="billing")
    yield b
    b.close()


@pytest.mark.parametrize("msg", [{1, 2}, {"x": object()}, float("nan"), {"inf": math.inf}, b"bytes"])
def test_msg_that_is_not_json(bus, msg):
    with pytest.raises(MessageError, match="JSON"):
        bus.publish("t", msg, ["rust-a"], 1)
    with pytest.raises(MessageError):
        bus.send("t", msg)


def test_cyclic_and_deep_msgs(bus):
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(MessageError):
        bus.publish("t", cyclic, ["rust-a"], 1)
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(MessageError):
        bus.publish("t", deep, ["rust-a"], 1)
    moderately_deep = []
    for _ in range(300):
        moderately_deep = [moderately_deep]
    with pytest.raises(MessageError):
        bus.publish("t", moderately_deep, ["rust-a"], 1)


@pytest.mark.parametrize("kwargs", [
    {"topic": 1},
    {"topic": None},
    {"recipients": "rust-a"},
    {"recipients": [1]},
    {"recipients": 42},
    {"ack_timeout": "3"},
    {"ack_timeout": [1]},
])
def test_wrong_argument_types(bus, kwargs):
    args = {"topic": "t", "msg": {}, "recipients": ["rust-a"], "ack_timeout": 1.0}
    args.update(kwargs)
    with pytest.raises(TypeError):
        bus.publish(**args)


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), 1e300, 10**400 // 10**390,
                                     gilmsg_rs.MAX_TIMEOUT + 1])
def test_bad_timeouts(bus, timeout):
    with pytest.raises((MessageError, OverflowError)):
        bus.publish("t", {}, ["rust-a"], timeout)


def test_timeout_over_max_message_age(bus):
    with pytest.raises(MessageError, match="max_message_age"):
        bus.publish("t", {}, ["rust-a"], 10 * 86400)


def test_empty_recipient_and_reserved_topic(bus, zmq_bus):
    with pytest.raises(MessageError, match="empty recipient"):
        bus.publish("t", {}, [""], 1)
    acks = gilmsg_rs.Bus(zmq_bus.config_path, certname="py-pub", modname="gilmsg")
    with pytest.raises(MessageError, match="reserved"):
        acks.publish("ack", {}, ["rust-a"], 1)
    acks.close()


def test_closed_bus(bus):
    bus.close()
    with pytest.raises(BusError):
        bus.publish("t", {}, ["rust-a"], 1)


def test_publish_async_needs_a_running_loop(bus):
    with pytest.raises(RuntimeError):
        bus.publish_async("t", {}, ["rust-a"], 1)


def test_consumer_bad_arguments(zmq_bus):
    with pytest.raises(TypeError):
        gilmsg_rs.Consumer(zmq_bus.config_path, 42)
    with pytest.raises(TypeError):
        gilmsg_rs.Consumer(zmq_bus.config_path, "rust-a", topics="org.example")
    with pytest.raises(MessageError):
        gilmsg_rs.Consumer(zmq_bus.config_path, "rust-a", queue=0)
    with pytest.raises((OverflowError, TypeError)):
        gilmsg_rs.Consumer(zmq_bus.config_path, "rust-a", queue=-1)
    c = gilmsg_rs.Consumer(zmq_bus.config_path, "rust-a")
    with pytest.raises(MessageError):
        c.next(timeout=-1)
    with pytest.raises(MessageError):
        c.wait_ready(float("nan"))
    c.close()


def test_config_dict_as_fedmsg_returns_it(zmq_bus):
    # fedmsg.config.load_config()'s dict, with a value JSON has no form for.
    bus = gilmsg_rs.Bus(zmq_bus.fedmsg_dict(), certname="py-pub", modname="billing")
    assert bus.signer_name == "py-pub"
    bus.close()
    bad = zmq_bus.fedmsg_dict()
    bad["relay_inbound"] = ["not an endpoint"]
    with pytest.raises(ConfigError) as caught:
        gilmsg_rs.Bus(bad)
    assert caught.value.key and caught.value.key.startswith("relay_inbound")


@pytest.mark.parametrize("kwargs", [
    {"certname": 1},
    {"modname": ["billing"]},
    {"active": "yes"},
    {"require_ack_digest": 2.5},
])
def test_wrong_constructor_types(zmq_bus, kwargs):
    with pytest.raises(TypeError):
        gilmsg_rs.Bus(zmq_bus.config_path, **kwargs)


def test_wrong_types_async_and_compat(bus, zmq_bus):
    from gilmsg_rs import compat

    async def main():
        with pytest.raises(TypeError):
            bus.publish_async("t", {}, "rust-a", 1)
        with pytest.raises(MessageError):
            bus.publish_async("t", {1, 2}, ["rust-a"], 1)
        with pytest.raises(MessageError):
            bus.publish_async("t", {}, ["rust-a"], -5)

    asyncio.run(main())
    with pytest.raises(TypeError):
        compat.publish(msg={}, recipients=["rust-a"], config_path=str(zmq_bus.config_path))
    with pytest.raises(MessageError):
        compat.publish(topic="t", msg=object(), recipients=["rust-a"], ack_timeout=1,
                       config_path=str(zmq_bus.config_path), certname="py-pub")
