//! The MQTT side of the firehose: one thread owns the MQTT client
//! (rumqttc) and its connection; the bus side hands it messages through a
//! bounded channel and never waits for it.
//!
//! Why a thread of its own with its own runtime: a broker that is slow, down
//! or refusing must never slow the bus side. [`MqttSink::offer`] is a
//! `try_send`: when the buffer is full (the broker is down, or slower than
//! the bus) the message is dropped and counted (`dropped.buffer_full`),
//! never queued without bound. The owner takes from the buffer only while
//! connected, so a down broker fills the buffer and the rest is counted.
//! It reconnects with a doubling back-off (100 ms to 5 s), reset by each
//! successful connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::mpsc;

use super::Counters;

/// The first wait before reconnecting, doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// QoS of every publish.
    pub qos: QoS,
    /// Whether the broker keeps the last message of each topic.
    pub retain: bool,
    /// The largest payload sent (a larger one is dropped and counted).
    pub max_packet: usize,
}

/// One MQTT publish.
#[derive(Debug)]
pub struct Outbound {
    /// MQTT topic.
    pub topic: String,
    /// JSON payload.
    pub payload: Vec<u8>,
}

/// The bus side's handle on the MQTT owner thread; dropping it stops the
/// thread (after a disconnect).
#[derive(Debug)]
pub struct MqttSink {
    buffer: Option<mpsc::Sender<Outbound>>,
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MqttSink {
    /// Starts the owner thread with a buffer of `buffer` messages.
    pub fn start(
        settings: MqttSettings,
        buffer: usize,
        counters: Arc<Counters>,
    ) -> std::io::Result<MqttSink> {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let owner_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("firehose-mqtt".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("gilmsg-firehose: cannot start the MQTT runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(own(settings, rx, owner_counters));
            })?;
        Ok(MqttSink {
            buffer: Some(tx),
            counters,
            thread: Some(thread),
        })
    }

    /// Hands one publish over without waiting; false (and counted) when
    /// the buffer is full.
    pub fn offer(&self, outbound: Outbound) -> bool {
        let Some(buffer) = &self.buffer else {
            return false;
        };
        match buffer.try_send(outbound) {
            Ok(()) => true,
            Err(_) => {
                self.counters
                    .dropped_buffer_full
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.buffer.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The owner's loop: drives the connection, takes from the buffer while
/// connected, reconnects with back-off.
async fn own(
    settings: MqttSettings,
    mut buffer: mpsc::Receiver<Outbound>,
    counters: Arc<Counters>,
) {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_session(true);
    // The envelope, signature and certificate make payloads far larger
    // than rumqttc's 10 KiB default.
    options.set_max_packet_size(64 * 1024, settings.max_packet);
    if let Some((user, password)) = &settings.credentials {
        options.set_credentials(user, password);
    }
    // rumqttc's own queue between the client and its event loop; when it
    // is full (QoS 1/2 in flight to a slow broker) publishes are dropped
    // and counted, like a full buffer.
    options.set_request_channel_capacity(1024);
    let (client, mut events) = AsyncClient::new(options, 1024);
    let address = format!("{}:{}", settings.host, settings.port);
    let mut connected = false;
    let mut backoff = FIRST_BACKOFF;
    loop {
        tokio::select! {
            biased;
            event = events.poll() => match event {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    connected = true;
                    backoff = FIRST_BACKOFF;
                    counters.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                    eprintln!("gilmsg-firehose: mqtt connected to {address}");
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    counters.mqtt_sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        counters.mqtt_connection_lost.fetch_add(1, Ordering::Relaxed);
                        eprintln!("gilmsg-firehose: mqtt connection to {address} lost: {e}");
                    } else {
                        tracing::debug!("mqtt: cannot connect to {address}: {e}");
                    }
                    connected = false;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
            next = buffer.recv(), if connected => {
                let Some(outbound) = next else { break };
                if outbound.payload.len() + outbound.topic.len() + 16 > settings.max_packet {
                    counters.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Err(e) = client.try_publish(outbound.topic, settings.qos, settings.retain, outbound.payload) {
                    counters.dropped_client_full.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("mqtt: publish dropped: {e}");
                }
            }
        }
        // Stopping: done once the buffer is drained, or at once while the
        // broker is away (a stop never waits for a broker that is down).
        if buffer.is_closed() && (buffer.is_empty() || !connected) {
            break;
        }
    }
    let _ = client.try_disconnect();
    // Lets the disconnect go out, briefly: a stop must not hang on a
    // dead broker.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while events.poll().await.is_ok() {}
    })
    .await;
}
