"""gilmsg_rs's numbers for gilmsg-bench (crates/bench, section
``python-package``): run by the bench as a child, on the bench's own bus,
beside the Rust library's numbers of the same run.

Usage: bench.py CONFIG CERTNAME MODNAME RECIPIENTS SAMPLES MESSAGES WINDOW

Prints one JSON line: ``{"p50_us", "p90_us", "p99_us", "samples",
"msgs_per_s", "window", "messages"}``: the warm in-process ``Bus.publish``
latency (one at a time, like the bench's Rust latency run), and, when
MESSAGES > 0, acknowledged messages per second from this one process with
WINDOW ``publish_async`` calls in flight on asyncio.
"""

import asyncio
import json
import statistics
import sys
import time

import gilmsg_rs


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    config, certname, modname, recipients, samples, messages, window = sys.argv[1:8]
    recipients = recipients.split(",")
    samples, messages, window = int(samples), int(messages), int(window)
    bus = gilmsg_rs.Bus(config, certname=certname, modname=modname)
    warmup = max(10, samples // 10)
    latencies = []
    for i in range(samples + warmup):
        start = time.perf_counter()
        bus.publish("latency", {"seq": i, "payload": "x" * 64}, recipients, 10)
        if i >= warmup:
            latencies.append((time.perf_counter() - start) * 1e6)
    out = {"samples": samples, "p50_us": statistics.median(latencies),
           "p90_us": pct(latencies, 90), "p99_us": pct(latencies, 99)}
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
