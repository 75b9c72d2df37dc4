"""Settling the asyncio futures the Rust runtime completes (called through
``loop.call_soon_threadsafe``, so on the loop's own thread)."""

from __future__ import annotations

import asyncio


def resolve(future: "asyncio.Future[object]", ok: bool, value: object) -> None:
    """Sets the result (``ok``) or the exception of ``future``, unless it
    was cancelled meanwhile."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)  # type: ignore[arg-type]
