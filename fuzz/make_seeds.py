#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (deterministic).

Run from anywhere: `python3 fuzz/make_seeds.py`. Seeds are small realistic
inputs: bodies as Python fedmsg/gilmsg and gilmsg-rs produce them, ACKs,
configs. The signature/certificate strings in message seeds are placeholders
(frame_decoder and envelope_json never verify them); signature_validation
builds its validly signed messages itself at start-up, so its seeds are
edit-operation scripts (see fuzz_targets/signature_validation.rs).
"""

import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")

TOPIC = "org.fedoraproject.dev.logger.log"
ACK_TOPIC = "org.fedoraproject.dev.gilmsg.ack"


def canon(v):
    """fedmsg's signed form: sort_keys, compact, ensure_ascii."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def body(msg, i=1, topic=TOPIC, signed=True, ack=True, **extra):
    b = {
        "topic": topic,
        "msg": msg,
        "msg_id": "2026-6f1c3e1a-5d2b-4c8e-9a77-0b3c2d1e4f50",
        "i": i,
        "timestamp": 1767225600,
        "username": "alice",
    }
    if ack:
        b["gilmsg_version"] = "gilmsg-rs/0.1.0"
    if signed:
        b["crypto"] = "ed25519"
        b["signature"] = "c2lnbmF0dXJl" * 7 + "AA=="
        b["certificate"] = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
    b.update(extra)
    return b


def messages():
    """(name, topic, body bytes) of realistic bodies."""
    out = []
    b = body({"text": "hello"})
    out.append(("log_signed_canonical", TOPIC, canon(b).encode()))
    out.append(("log_python_spacing", TOPIC, json.dumps(b).encode()))
    b = body({"text": "h\u00e9llo \U0001F600", "n": 1.5, "big": 10**30,
              "f": [1e-05, 1e16, -0.0, 0.1]}, ack=False)
    out.append(("unicode_numbers", TOPIC, json.dumps(b, ensure_ascii=False).encode()))
    b = body({"ack_msg_id": "2026-6f1c3e1a-5d2b-4c8e-9a77-0b3c2d1e4f50",
              "ack_digest": "sha256:" + "ab" * 32}, topic=ACK_TOPIC)
    out.append(("ack", ACK_TOPIC, canon(b).encode()))
    b = body({"ack_msg_id": "2026-x"}, topic=ACK_TOPIC, ack=False)
    out.append(("ack_python_no_digest", ACK_TOPIC, canon(b).encode()))
    b = body({"text": "x"}, signed=False, ack=False, username=None)
    out.append(("unsigned_null_user", TOPIC, canon(b).encode()))
    b = body({"n": 1}, gilmsg_version=1)
    out.append(("numeric_gilmsg_version", TOPIC, canon(b).encode()))
    b = body({"n": 1}, certificate="LS0t\nLS1C\n")
    out.append(("wrapped_cert_field", TOPIC, json.dumps(b).encode()))
    return out


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    msgs = messages()

    # frame_decoder: byte 0 = frame count (low 3 bits) | limit (bits 4-5).
    for name, topic, data in msgs:
        write("frame_decoder", name, b"\x02" + topic.encode() + b"\0" + data)
    name, topic, data = msgs[0]
    write("frame_decoder", "small_limit", b"\x12" + topic.encode() + b"\0" + data)
    write("frame_decoder", "three_frames", b"\x03" + topic.encode() + b"\0" + data + b"\0x")
    write("frame_decoder", "topic_mismatch", b"\x02org.other\0" + data)
    write("frame_decoder", "one_frame", b"\x01" + data)

    # envelope_json: a body.
    for name, _, data in msgs:
        write("envelope_json", name, data)
    write("envelope_json", "floats", b'[1.10,1E5,2.5e-5,1e16,-0,-0.0,5e-324,1.7976931348623157e308,123456789012345678901234567890]')
    write("envelope_json", "escapes", json.dumps("\"\\\n\r\t\b\f\x01\x7f/<>\u2028\U0001F600").encode())
    write("envelope_json", "ack_msg", b'{"ack_msg_id":"m","ack_digest":null}')

    # config_reader: the test vectors plus small hand-written files.
    data_dir = os.path.join(ROOT, "crates", "config", "tests", "data")
    for f in sorted(os.listdir(data_dir)):
        with open(os.path.join(data_dir, f), "rb") as fh:
            write("config_reader", f, fh.read())
    write("config_reader", "minimal.toml",
          b'environment = "stg"\nname = "bodhi.app01"\n[endpoints]\n"bodhi.app01" = "tcp://127.0.0.1:3000"\n')
    write("config_reader", "active.toml",
          b'active = true\nrelay_inbound = "tcp://127.0.0.1:2001"\nack_timeout = "250ms"\nresend_max = 2\n')
    write("config_reader", "fedmsg_min.json",
          json.dumps({"topic_prefix": "org.fedoraproject", "environment": "dev",
                      "endpoints": {"relay_outbound": ["tcp://127.0.0.1:4001"]},
                      "zmq_linger": 1000, "zmq_tcp_keepalive": 1,
                      "sign_messages": None, "irc": []}).encode())
    write("config_reader", "durations.toml",
          b'resend_initial = 0.05\nresend_min = "10ms"\nresend_max = "1s"\nzmq_linger = 0\npost_init_sleep = 0.5\nhigh_water_mark = 0\n')

    # signature_validation: byte 0 = base, then edit operations.
    u16 = lambda v: struct.pack("<H", v)
    sv = {
        "untouched_alice": b"\x00",
        "untouched_legacy": b"\x02",
        "untouched_revoked": b"\x03",
        "flip_sig_text": b"\x00" + b"\x00" + u16(10) + b"\x01",
        "flip_sig_bytes": b"\x01" + b"\x02" + u16(63) + b"\x80",
        "flip_cert_der": b"\x00" + b"\x03" + u16(200) + b"\x04",
        "truncate_cert": b"\x00" + b"\x04" + u16(100),
        "random_cert": b"\x00" + b"\x05" + b"\x04" + b"\x30\x03\x02\x01",
        "set_msg_string": b"\x00" + b"\x06" + b"\x01" + b"\x03" + b"abc",
        "set_i_json": b"\x00" + b"\x07" + b"\x03" + b"\x04" + b"1.00",
        "remove_gilmsg_version": b"\x00" + b"\x08" + b"\x09",
        "legacy_change_version": b"\x02" + b"\x06" + b"\x09" + b"\x01" + b"9",
        "transplant_from_revoked": b"\x00" + b"\x09" + b"\x08" + b"\x03" + b"\x09" + b"\x07" + b"\x03",
        "scheme_x509": b"\x00" + b"\x0a" + b"\x01",
        "whitespace_sig": b"\x00" + b"\x0b" + b"\x00" + u16(20),
        "long_sig": b"\x01" + b"\x0c" + b"\x02" + b"\x00\x00",
        "msg_add_key": b"\x00" + b"\x0d" + b"\x01" + b"z",
    }
    for name, data in sv.items():
        write("signature_validation", name, data)

    total = sum(os.path.getsize(os.path.join(dp, f))
                for dp, _, fs in os.walk(CORPUS) for f in fs)
    print(f"seed corpus: {total} bytes")


if __name__ == "__main__":
    main()
