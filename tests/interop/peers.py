"""Python peers for gilmsg's interoperability tests (tests/interop.rs).

Run with the interpreter of the venv made by scripts/python-peers.sh
(fedmsg 1.1.7, gilmsg 0.1.2), from a directory holding `fedmsg.d/`: fedmsg's
legacy config loader reads `./fedmsg.d/*.py` from the working directory.

Every sub-command:
- arms SIGALRM for `--limit` seconds first, so the process dies on its own
  even if the test that started it is killed (gilmsg-logger is known to hang
  after a timeout; the relay runs until stopped);
- prints machine-readable lines on stdout that start with `peers: `, flushed
  at once: `peers: ready ...` once its sockets exist, `peers: got {json}` per
  message, `peers: exit rc=N` when a wrapped console script returns.

Sub-commands:
  run --limit S -- SCRIPT [ARGS...]
      Run a console script of the venv (fedmsg-logger, gilmsg-logger,
      fedmsg-config, ...) in this process, bounded by the alarm.
  relay --limit S
      Run fedmsg-relay; prints `peers: ready relay` once the moksha hub has
      bound its sockets and its reactor runs.
  consume --name CN --limit S [--count N]
      A gilmsg consumer (gilmsg.tail_messages): publishes its ACKs through
      relay_inbound, signed with the identity whose CN is CN (cert_prefix CN).
      Prints `peers: ready consume name=CN` once its SUB sockets are connected
      and it is polling, then `peers: got {...}` per gilmsg message it acked.
  tail --limit S [--count N]
      A plain fedmsg.tail_messages consumer (validate_signatures as the config
      says); prints `peers: ready tail` then, per message, `peers: got` with
      {"topic": frame-0 topic, "body": body, "canonical_msg": fedmsg's
      canonical JSON of body["msg"]}.
  forge --limit S KIND[:CERTNAME] ...
      Sign fedmsg messages in Python (fedmsg.crypto.sign) and publish them raw
      to relay_inbound with a ZeroMQ XPUB socket, once the relay's SUB has
      subscribed (no lost first message). KIND is `good` (as signed),
      `tampered` (msg changed after signing) or `marker` (good, msg
      {"marker": true}). Prints `peers: sent KIND msg_id=...` per message.
"""

import argparse
import json
import signal
import sys
import uuid
import datetime
import time


def say(line):
    sys.stdout.write("peers: " + line + "\n")
    sys.stdout.flush()


def arm(limit):
    # Default SIGALRM action terminates the process, whatever its threads do.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, int(limit + 0.999)))


def console_script(name):
    from importlib.metadata import entry_points
    for ep in entry_points(group="console_scripts"):
        if ep.name == name:
            return ep.load()
    # Not every command is an entry point: fedmsg-config is a plain script
    # in the venv's bin/ (`import fedmsg.commands.config; ...config()`).
    import os
    import runpy
    path = os.path.join(sys.prefix, "bin", name)
    if os.path.isfile(path):
        def script():
            runpy.run_path(path, run_name="__main__")
        return script
    raise SystemExit("peers: no console script %r in this venv" % name)


def cmd_run(args):
    main = console_script(args.script)
    sys.argv = [args.script] + args.args
    try:
        rc = main()
    except SystemExit as e:
        rc = e.code
    except Exception:
        import traceback
        traceback.print_exc()
        rc = 1
    if rc is None:
        rc = 0
    if not isinstance(rc, int):
        sys.stderr.write("%s\n" % rc)
        rc = 1
    say("exit rc=%d" % rc)
    sys.stdout.flush()
    sys.stderr.flush()
    # gilmsg-logger leaves a non-daemon listener thread behind after a
    # timeout (it would block interpreter shutdown); leave at once.
    import os
    os._exit(rc)


def cmd_relay(args):
    from moksha.hub.reactor import reactor
    reactor.callWhenRunning(lambda: say("ready relay"))
    main = console_script("fedmsg-relay")
    sys.argv = ["fedmsg-relay"]
    main()


def announce_when_polling(text):
    """Print `text` the first time fedmsg polls its SUB sockets: by then every
    SUB is created, subscribed and connected (zmq connects asynchronously, so
    the subscription may still be on its way to the relay; the Rust publisher
    re-sends until acked, and one-shot tests send probes first)."""
    import zmq
    original = zmq.Poller.poll
    state = {"said": False}

    def poll(self, *a, **kw):
        if not state["said"]:
            state["said"] = True
            say(text)
        return original(self, *a, **kw)

    zmq.Poller.poll = poll


def cmd_consume(args):
    import fedmsg
    import gilmsg
    # Active: ACKs go out through relay_inbound, like fedmsg-logger; signed
    # with certnames["<CN>.<host>"] (the fedmsg.d file maps it to CN).
    fedmsg.init(active=True, name="relay_inbound", cert_prefix=args.name)
    announce_when_polling("ready consume name=%s" % args.name)
    seen = 0
    for _n, _e, topic, body in gilmsg.tail_messages():
        if "gilmsg_version" not in body:
            continue
        say("got " + json.dumps({"topic": topic, "body": body}, sort_keys=True))
        seen += 1
        if args.count and seen >= args.count:
            break
    # Let the last ACK leave (zmq_linger applies on close).
    fedmsg.destroy()


def cmd_tail(args):
    import fedmsg
    import fedmsg.encoding
    fedmsg.init(mute=True, name="relay_inbound")
    announce_when_polling("ready tail")
    seen = 0
    for _n, _e, topic, body in fedmsg.tail_messages():
        out = {"topic": topic, "body": body,
               "canonical_msg": fedmsg.encoding.dumps(body.get("msg"))}
        say("got " + json.dumps(out, sort_keys=True))
        seen += 1
        if args.count and seen >= args.count:
            break


def cmd_forge(args):
    import getpass
    import zmq
    import fedmsg.config
    import fedmsg.crypto
    import fedmsg.encoding

    config = fedmsg.config.load_config([], None)
    inbound = config["relay_inbound"]
    if isinstance(inbound, str):
        inbound = [inbound]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(inbound[0])
    # An XPUB hears the relay's subscription once the connection is up:
    # only then can a message not be dropped.
    sub = sock.recv()
    say("relay subscribed %r" % (sub,))
    topic = "%s.%s.forge.test" % (config["topic_prefix"], config["environment"])
    for n, spec in enumerate(args.kinds, start=1):
        kind, _, certname = spec.partition(":")
        certname = certname or config["certnames"]["shell." + config_host()]
        payload = {"kind": kind, "n": n}
        if kind == "marker":
            payload = {"marker": True}
        body = {
            "topic": topic,
            "msg": payload,
            "timestamp": int(time.time()),
            "msg_id": str(datetime.datetime.now().year) + "-" + str(uuid.uuid4()),
            "i": n,
            "username": getpass.getuser(),
        }
        signed = fedmsg.crypto.sign(body, **dict(config, certname=certname))
        if kind == "tampered":
            signed["msg"] = {"kind": kind, "n": n + 1000}
        elif kind not in ("good", "marker"):
            raise SystemExit("peers: unknown forge kind %r" % kind)
        sock.send_multipart([topic.encode("utf-8"),
                             fedmsg.encoding.dumps(signed).encode("utf-8")])
        say("sent %s certname=%s msg_id=%s" % (kind, certname, signed["msg_id"]))
    sock.close()
    ctx.term()


def config_host():
    import socket
    return socket.gethostname().split(".")[0]


def main():
    parser = argparse.ArgumentParser(prog="peers.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("relay")
    p.add_argument("--limit", type=float, required=True)
    p = sub.add_parser("consume")
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--count", type=int, default=0)
    p = sub.add_parser("tail")
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--count", type=int, default=0)
    p = sub.add_parser("forge")
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("kinds", nargs="+")
    args = parser.parse_args()
    arm(args.limit)
    if args.command == "run" and args.args[:1] == ["--"]:
        args.args = args.args[1:]
    {"run": cmd_run, "relay": cmd_relay, "consume": cmd_consume,
     "tail": cmd_tail, "forge": cmd_forge}[args.command](args)


if __name__ == "__main__":
    main()
