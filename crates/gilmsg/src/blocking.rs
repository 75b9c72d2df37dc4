//! A blocking facade for producers that are not async, in the manner of
//! mini-redis's `blocking_client`: the async [`crate::Bus`] driven by a
//! current-thread tokio runtime owned by the handle.

use std::time::Duration;

use gilmsg_config::Config;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::{Receipt, Stats};

/// A blocking publisher handle. Not for use inside an async runtime (its
/// calls block the thread); use [`crate::Bus`] there.
pub struct Bus {
    inner: crate::Bus,
    runtime: tokio::runtime::Runtime,
    /// Whether the socket loop is a task on `runtime` (`on_own_runtime`):
    /// dropping the handle then closes it first, since the runtime, dropped
    /// right after, would otherwise never run the loop's stop.
    loop_on_runtime: bool,
}

impl Drop for Bus {
    fn drop(&mut self) {
        if self.loop_on_runtime {
            self.runtime.block_on(self.inner.clone().close());
        }
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Bus {
    /// A handle from `config` with default settings.
    pub fn new(config: &Config) -> Result<Bus> {
        Bus::from_async(crate::Bus::new(config)?)
    }

    /// Wraps an async handle built with [`crate::Bus::builder`].
    pub fn from_async(inner: crate::Bus) -> Result<Bus> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| Error::os("cannot start runtime", e))?;
        Ok(Bus {
            inner,
            runtime,
            loop_on_runtime: false,
        })
    }

    /// Builds `builder`'s handle with its ZeroMQ socket loop on this
    /// facade's own runtime
    /// ([`run_on_current_runtime`](crate::BusBuilder::run_on_current_runtime)):
    /// each publish then runs on the calling thread from start to receipt,
    /// with no hand-off to a socket thread (the fastest way to publish one
    /// message at a time, docs/benchmarks.md). Between calls the loop does
    /// not run, so [`crate::Bus::health`] reports it stale. Dropping the
    /// handle closes it (as [`Bus::close`] does: queued messages get up to
    /// `zmq_linger` to leave).
    pub fn on_own_runtime(builder: crate::BusBuilder) -> Result<Bus> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::os("cannot start runtime", e))?;
        let inner = runtime.block_on(async { builder.run_on_current_runtime(true).build() })?;
        Ok(Bus {
            inner,
            runtime,
            loop_on_runtime: true,
        })
    }

    /// See [`crate::Bus::publish`].
    pub fn publish<S: AsRef<str>>(
        &self,
        topic: &str,
        msg: Value,
        recipients: &[S],
        ack_timeout: Duration,
    ) -> Result<Receipt> {
        self.runtime
            .block_on(self.inner.publish(topic, msg, recipients, ack_timeout))
    }

    /// See [`crate::Bus::send`].
    pub fn send(&self, topic: &str, msg: Value) -> Result<Receipt> {
        self.runtime.block_on(self.inner.send(topic, msg))
    }

    /// See [`crate::Bus::stats`].
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// See [`crate::Bus::health`]. With [`Bus::on_own_runtime`] the loop
    /// turns only during calls, so between them it reads as stuck after
    /// [`crate::health::STUCK_AFTER`].
    pub fn health(&self) -> crate::health::Health {
        self.inner.health()
    }

    /// See [`crate::Bus::close`].
    pub fn close(self) {
        self.runtime.block_on(self.inner.clone().close());
    }
}
