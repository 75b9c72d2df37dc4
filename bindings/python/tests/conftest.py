"""Fixtures: a process registry killed by PID after each test, one RSA PKI
per session, a ZeroMQ bus (relay) per test, one RabbitMQ node per session
with a vhost per test. See buses.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import buses


def _required(var: str) -> bool:
    return bool(os.environ.get(var))


@pytest.fixture
def procs():
    registry = buses.Procs()
    yield registry
    registry.kill_all()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    return buses.rsa_pki(tmp_path_factory.mktemp("pki") / "pki", buses.IDENTITIES)


@pytest.fixture
def zmq_bus(tmp_path, pki, procs) -> buses.ZmqBus:
    return buses.ZmqBus(tmp_path, pki, procs)


@pytest.fixture
def peers() -> Path:
    venv = buses.python_peers()
    if venv is None:
        if _required("GILMSG_REQUIRE_PYTHON_PEERS"):
            pytest.fail("GILMSG_PYTHON_PEERS is not set (scripts/python-peers.sh makes the venv)")
        pytest.skip("GILMSG_PYTHON_PEERS is not set: no Python gilmsg 0.1.2 peers")
    return venv


@pytest.fixture(scope="session")
def rabbit():
    if not buses.rabbit_installed():
        if _required("GILMSG_REQUIRE_RABBITMQ"):
            pytest.fail("rabbitmq-server is not installed and GILMSG_REQUIRE_RABBITMQ is set")
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    node = buses.Rabbit()
    yield node
    node.stop()


@pytest.fixture
def amqp_bus(request, rabbit, tmp_path, pki, procs) -> buses.AmqpBus:
    vhost = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    return buses.AmqpBus(rabbit, vhost, tmp_path, pki, procs)


@pytest.fixture(params=["zeromq", "amqp"])
def any_bus(request):
    """Each transport in turn."""
    return request.getfixturevalue("zmq_bus" if request.param == "zeromq" else "amqp_bus")
