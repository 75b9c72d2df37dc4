"""Real buses for the gilmsg_rs tests: processes, a PKI, configs.

- ``Proc``: a child process whose stdout and stderr lines are collected by
  threads; tests synchronise on printed lines (``wait_line``), never on a
  sleep, and every ``Proc`` is killed by PID when its fixture ends.
- ``rsa_pki``: a throwaway RSA PKI by the recipe Python fedmsg accepts (the
  ``openssl`` CLI, as ``crates/testkit/src/rsa_pki.rs`` does), so Python
  gilmsg 0.1.2 peers verify what we sign.
- ``ZmqBus``: a ``gilmsg-relay`` on ephemeral loopback ports, a gilmsg
  TOML and a ``fedmsg.d/`` for the Python peers, Rust consumers
  (``gilmsg-consumer`` from ``target/debug``) and Python gilmsg consumers
  (``tests/interop/peers.py consume`` in the python-peers venv).
- ``Rabbit``: a throwaway RabbitMQ node, started as ``cli/src/rabbit.rs``
  starts one (Debian's scripts run directly with a private HOME, data dir,
  ports and epmd, ``rabbitmqctl wait`` for readiness; a watchdog child
  stops the node by PID if this process dies), and ``AmqpBus``, one vhost
  of it with a config.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("GILMSG_BIN_DIR") or REPO / "target" / "debug")
PEERS_SCRIPT = REPO / "tests" / "interop" / "peers.py"
PREFIX = "org.example"
ENV = "dev"
READY = 30.0


def python_peers() -> Optional[Path]:
    """The venv of scripts/python-peers.sh (fedmsg 1.1.7, gilmsg 0.1.2)."""
    venv = os.environ.get("GILMSG_PYTHON_PEERS")
    return Path(venv) if venv else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process; its output lines are kept and can be waited for."""

    def __init__(self, name: str, args: Sequence[str], **popen) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            **popen,
        )
        self.lines = {"stdout": [], "stderr": []}
        self.cond = threading.Condition()
        for stream in ("stdout", "stderr"):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: str) -> None:
        for line in getattr(self.popen, stream):
            with self.cond:
                self.lines[stream].append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines[stream].append(None)  # end of stream
            self.cond.notify_all()

    def wait_line(self, stream: str, match: Callable[[str], bool], timeout: float = READY, start: int = 0) -> str:
        """The first line of ``stream`` (from index ``start``) that ``match``
        accepts, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                seen = self.lines[stream]
                while i < len(seen):
                    line = seen[i]
                    if line is None:
                        raise AssertionError(f"{self.name} ended before the line we wait for:\n{self.output()}")
                    if match(line):
                        return line
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no such line within {timeout}s:\n{self.output()}")
                self.cond.wait(left)

    def output(self) -> str:
        with self.cond:
            return "\n".join(
                f"[{s}] {line}" for s in ("stdout", "stderr") for line in self.lines[s] if line is not None
            )

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def run(args: Sequence[str], cwd: Path, timeout: float = 60.0) -> None:
    out = subprocess.run([str(a) for a in args], cwd=cwd, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {out.returncode}: {out.stderr}")


CA_CNF = """\
[ ca ]
default_ca = gilmsg_ca
[ gilmsg_ca ]
database         = ./index.txt
new_certs_dir    = ./newcerts
serial           = ./serial
crlnumber        = ./crlnumber
certificate      = ./ca.crt
private_key      = ./ca.key
default_md       = sha256
default_days     = 3650
default_crl_days = 3650
policy           = policy_any
unique_subject   = no
copy_extensions  = none
[ policy_any ]
commonName = supplied
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints     = critical,CA:TRUE
keyUsage             = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ v3_leaf ]
basicConstraints       = CA:FALSE
keyUsage               = critical,digitalSignature
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
"""


def rsa_pki(d: Path, names: Sequence[str]) -> Path:
    """CA, one RSA-2048 leaf per name, a CRL; keys mode 0600."""
    (d / "newcerts").mkdir(parents=True)
    (d / "ca.cnf").write_text(CA_CNF)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "crlnumber").write_text("1000\n")
    run(["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
         "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=gilmsg-python-test-ca", "-config", "ca.cnf",
         "-extensions", "v3_ca"], d)
    for name in names:
        run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", "-config", "ca.cnf"], d)
        run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-extensions", "v3_leaf", "-notext",
             "-in", f"{name}.csr", "-out", f"{name}.crt"], d)
        (d / f"{name}.csr").unlink()
        os.chmod(d / f"{name}.key", 0o600)
    run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"], d)
    os.chmod(d / "ca.key", 0o600)
    return d


IDENTITIES = ["py-pub", "rust-a", "rust-b", "rust-c", "py-a", "py-b", "offline"]


class Procs:
    """The processes a test started; all killed (by PID) at the end."""

    def __init__(self) -> None:
        self.procs: List[Proc] = []

    def start(self, name: str, args: Sequence[str], **popen) -> Proc:
        p = Proc(name, args, **popen)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in reversed(self.procs):
            p.kill()


class ZmqBus:
    """A relay on loopback, a config for the library and the Rust tools, and
    a ``fedmsg.d`` for Python peers, all signing with the RSA PKI."""

    def __init__(self, dir: Path, pki: Path, procs: Procs) -> None:
        self.dir, self.pki, self.procs = dir, pki, procs
        relay = procs.start("relay", [BIN_DIR / "gilmsg-relay", "--inbound", "tcp://127.0.0.1:*",
                                      "--outbound", "tcp://127.0.0.1:*"])
        line = relay.wait_line("stderr", lambda l: l.startswith("gilmsg-relay: ready"))
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        self.inbound, self.outbound = fields["inbound"], fields["outbound"]
        self.config_path = dir / "gilmsg.toml"
        self.config_path.write_text(self.toml())
        self.write_fedmsg_d()

    def toml(self, extra: str = "") -> str:
        return f"""# Written by bindings/python/tests.
topic_prefix = "{PREFIX}"
environment = "{ENV}"
ssldir = "{self.pki}"
sign_messages = true
validate_signatures = true
active = true
relay_inbound = ["{self.inbound}"]
ack_timeout = "5s"
{extra}
[endpoints]
relay_outbound = ["{self.outbound}"]
"""

    def write_fedmsg_d(self) -> None:
        (self.dir / "fedmsg.d").mkdir(exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        certnames = ", ".join(f"{n!r} + '.' + _H: {n!r}" for n in IDENTITIES + ["shell"])
        (self.dir / "fedmsg.d" / "test.py").write_text(f"""# Written by bindings/python/tests.
import socket as _socket
_H = _socket.gethostname().split('.')[0]
config = dict(
    topic_prefix={PREFIX!r},
    environment={ENV!r},
    zmq_enabled=True,
    endpoints={{'relay_outbound': [{self.outbound!r}]}},
    relay_inbound=[{self.inbound!r}],
    sign_messages=True,
    validate_signatures=True,
    ssldir={str(self.pki)!r},
    ca_cert_location={str(self.pki / 'ca.crt')!r},
    crl_location={str(self.pki / 'crl.pem')!r},
    certnames={{{certnames}}},
    post_init_sleep=0.2,
    zmq_linger=2000,
)
""")

    def fedmsg_dict(self) -> dict:
        """The config dict ``fedmsg.config.load_config()`` would return (the
        keys gilmsg reads)."""
        host = socket.gethostname().split(".")[0]
        return {
            "topic_prefix": PREFIX,
            "environment": ENV,
            "endpoints": {"relay_outbound": [self.outbound]},
            "relay_inbound": [self.inbound],
            "sign_messages": True,
            "validate_signatures": True,
            "ssldir": str(self.pki),
            "ca_cert_location": str(self.pki / "ca.crt"),
            "crl_location": str(self.pki / "crl.pem"),
            "certnames": {f"{n}.{host}": n for n in IDENTITIES},
            "active": True,
            "logging": {"version": 1, "handlers": {"console": {"class": logging_class()}}},
        }

    def rust_consumer(self, name: str, *args: str, config: Optional[Path] = None) -> Proc:
        p = self.procs.start(f"gilmsg-consumer {name}", [
            BIN_DIR / "gilmsg-consumer", "--config", config or self.config_path, "--certname", name,
            "--json", *args])
        p.wait_line("stderr", lambda l: "gilmsg-consumer: ready" in l)
        return p

    def python_consumer(self, name: str, limit: float = 120) -> Proc:
        peers = python_peers()
        assert peers is not None, "GILMSG_PYTHON_PEERS is not set"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(HOME=str(self.dir / "home"), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        p = self.procs.start(f"python gilmsg consumer {name}", [
            peers / "bin" / "python", PEERS_SCRIPT, "consume", "--limit", str(limit), "--name", name],
            cwd=self.dir, env=env)
        p.wait_line("stdout", lambda l: l == f"peers: ready consume name={name}", timeout=60)
        return p


def logging_class() -> object:
    """A value JSON has no form for, as fedmsg's logging config holds."""
    return object


def got_json(proc: Proc, match: Callable[[dict], bool], timeout: float = READY, stream: str = "stdout",
             prefix: str = "") -> dict:
    """The first JSON line (after ``prefix``) of ``proc`` that ``match`` accepts."""
    def ok(line: str) -> bool:
        if not line.startswith(prefix):
            return False
        try:
            return bool(match(json.loads(line[len(prefix):])))
        except (ValueError, KeyError, TypeError):
            return False
    return json.loads(proc.wait_line(stream, ok, timeout)[len(prefix):])


RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def rabbit_installed() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists()


class Rabbit:
    """A throwaway RabbitMQ node on 127.0.0.1 (see cli/src/rabbit.rs)."""

    def __init__(self, limit: float = 90.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gilmsg-py-rabbit"))
        d = self.dir
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq.conf").write_text("loopback_users = none\n")
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.node = f"gilmsgpytest-{os.getpid()}-{self.port}@localhost"
        self.env = dict(os.environ)
        self.env.update({
            "HOME": str(d), "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1", "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"), "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        # The watchdog stops the node by PID when this process ends, however
        # it ends (its stdin pipe closes).
        pids = d / "pids"
        self.watchdog = subprocess.Popen(
            ["sh", "-c", f"read _x; for p in $(cat '{pids}' 2>/dev/null); do kill -TERM $p 2>/dev/null; done; "
                         f"sleep 3; for p in $(cat '{pids}' 2>/dev/null); do kill -KILL $p 2>/dev/null; done; "
                         f"rm -rf -- '{d}'"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = open(d / "server.out", "w")
        self.server = subprocess.Popen([RABBIT_BIN / "rabbitmq-server"], env=self.env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log)
        self._write_pids()
        try:
            self.ctl("wait", str(d / "pid"), "--timeout", str(int(limit)), limit=limit + 5)
        except Exception:
            out = (d / "server.out").read_text(errors="replace")
            self.stop()
            raise RuntimeError(f"RabbitMQ did not start:\n{out}")
        self._write_pids()

    def _write_pids(self) -> None:
        pids = [str(self.server.pid), str(self.epmd.pid)]
        try:
            pids.append((self.dir / "pid").read_text().strip())
        except OSError:
            pass
        (self.dir / "pids").write_text(" ".join(pids))

    def ctl(self, *args: str, limit: float = 30.0) -> str:
        out = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=limit)
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {out.returncode}: {out.stdout} {out.stderr}")
        return out.stdout

    def vhost(self, name: str) -> str:
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            beam = int((self.dir / "pid").read_text().strip())
            os.kill(beam, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        for p in (self.server, self.epmd):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        try:
            self.watchdog.stdin.write(b"\n")
            self.watchdog.stdin.close()
        except OSError:
            pass
        self.watchdog.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


class AmqpBus:
    """One vhost of the node, with a gilmsg config for it."""

    def __init__(self, rabbit: Rabbit, vhost: str, dir: Path, pki: Path, procs: Procs) -> None:
        self.url = rabbit.vhost(vhost)
        self.dir, self.pki, self.procs = dir, pki, procs
        self.config_path = dir / "amqp.toml"
        self.config_path.write_text(self.toml())

    def toml(self, extra: str = "") -> str:
        return f"""# Written by bindings/python/tests.
amqp_url = "{self.url}"
topic_prefix = "{PREFIX}.{ENV}"
ssldir = "{self.pki}"
sign_messages = true
validate_signatures = true
ack_timeout = "5s"
resend_initial = "200ms"
resend_max = "1s"
reconnect_max = "500ms"
{extra}
"""

    def rust_consumer(self, name: str, *args: str) -> Proc:
        p = self.procs.start(f"gilmsg-consumer {name}", [
            BIN_DIR / "gilmsg-consumer", "--config", self.config_path, "--certname", name, "--json", *args])
        p.wait_line("stderr", lambda l: "gilmsg-consumer: ready" in l)
        return p
