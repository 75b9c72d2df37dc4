"""gilmsg_rs's numbers for gilmsg-bench (crates/bench, section
``python-package``): run by the bench as a child, on the bench's own bus,
beside the Rust library's numbers of the same run.

Usage: bench.py CONFIG CERTNAME MODNAME RECIPIENTS SAMPLES MESSAGES WINDOW

The warm in-process ``Bus.publish`` latency (one at a time, like the
bench's Rust latency run) is timed in blocks the bench asks for, so that
the bench can interleave them with blocks of its own Rust publishes on the
same bus and both are measured in the same moments of the machine (its
speed drifts by a third within minutes). After SAMPLES // 10 (at least 10)
warm-up publishes it prints ``{"ready": true}``; then each stdin line
``block N`` times N publishes and prints ``{"block": [microseconds, ...]}``,
and ``end`` (or the end of stdin) closes the latency part.

Last, when MESSAGES > 0, acknowledged messages per second from this one
process with WINDOW ``publish_async`` calls in flight on asyncio; the last
line is ``{"msgs_per_s", "window", "messages"}`` (``{}`` without a flood).
"""

import asyncio
import json
import sys
import time

import gilmsg_rs


def main():
    config, certname, modname, recipients, samples, messages, window = sys.argv[1:8]
    recipients = recipients.split(",")
    samples, messages, window = int(samples), int(messages), int(window)
    bus = gilmsg_rs.Bus(config, certname=certname, modname=modname)
    warmup = max(10, samples // 10)
    seq = 0

    def publish_block(n):
        nonlocal seq
        latencies = []
        for _ in range(n):
            start = time.perf_counter()
            bus.publish("latency", {"seq": seq, "payload": "x" * 64}, recipients, 10)
            latencies.append((time.perf_counter() - start) * 1e6)
            seq += 1
        return latencies

    publish_block(warmup)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["end"]:
            break
        if len(words) == 2 and words[0] == "block":
            print(json.dumps({"block": publish_block(int(words[1]))}), flush=True)
    out = {}
    if messages:
        async def flood():
            semaphore = asyncio.Semaphore(window)

            async def one(n):
                async with semaphore:
                    await bus.publish_async("throughput", {"seq": n, "payload": "x" * 64}, recipients, 30)

            start = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(messages)))
            return messages / (time.perf_counter() - start)

        out.update(msgs_per_s=asyncio.run(flood()), window=window, messages=messages)
    bus.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
