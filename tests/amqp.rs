//! Acknowledged publishing over AMQP, on a real RabbitMQ node started for
//! this test binary (`gilmsg_testkit::rabbit`; each test has its own vhost).
//!
//! The acknowledged-publish tests of the ZeroMQ side, on AMQP (3 recipients,
//! one offline named exactly and served later by its durable queue, forged
//! ACKs refused, a failing handler never acked and given up after its
//! redeliveries), plus what only a broker has: an unroutable message fails
//! at once, a broker restart during a publish, TLS with client certificates.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gilmsg_testkit::fixture::ed25519_pki;
use gilmsg_testkit::rabbit::{self, Rabbit, Tls};
use gilmsg_testkit::within_async;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);
const PREFIX: &str = "org.gilmsg.test.dev";

/// The node every test of this binary shares; stopped by its watchdog when
/// the process ends.
fn node() -> Option<&'static Rabbit> {
    static NODE: OnceLock<Option<Rabbit>> = OnceLock::new();
    NODE.get_or_init(|| {
        if !rabbit::installed() {
            if std::env::var_os("GILMSG_REQUIRE_RABBITMQ").is_some() {
                panic!("{}", rabbit::NOT_INSTALLED);
            }
            eprintln!("skipping: {}", rabbit::NOT_INSTALLED);
            return None;
        }
        let dir = std::env::temp_dir().join(format!("gilmsg-amqp-tls-{}", std::process::id()));
        let tls = Tls::make(&dir, &["publisher", "ledger"]).unwrap_or_else(|e| panic!("{e}"));
        Some(Rabbit::start(Some(&tls), Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}")))
    })
    .as_ref()
}

fn tls_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gilmsg-amqp-tls-{}", std::process::id()))
}

/// One test's world: a vhost, a PKI, and a config for it.
struct World {
    dir: tempfile::TempDir,
    url: String,
}

impl World {
    fn new(vhost: &str, names: &[&str]) -> Option<World> {
        let node = node()?;
        let url = node.vhost(vhost).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let identities = [&["publisher"], names].concat();
        ed25519_pki(&dir.path().join("pki"), "amqp-test-ca", &identities).unwrap_or_else(|e| panic!("{e}"));
        Some(World { dir, url })
    }

    fn config_with(&self, extra: &str) -> gilmsg::Config {
        let path = self.dir.path().join(format!("bus-{}.toml", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let text = format!(
            "amqp_url = {url:?}\ntopic_prefix = {PREFIX:?}\nssldir = {ssldir:?}\nack_timeout = \"5s\"\n\
             resend_initial = \"200ms\"\nresend_max = \"1s\"\nreconnect_max = \"500ms\"\n{extra}\n",
            url = self.url,
            ssldir = self.dir.path().join("pki").display().to_string(),
        );
        std::fs::write(&path, text).expect("write config");
        gilmsg::Config::from_path(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn config(&self) -> gilmsg::Config {
        self.config_with("")
    }

    fn publisher(&self) -> gilmsg::Bus {
        gilmsg::Bus::builder(&self.config())
            .modname("test")
            .certname("publisher")
            .build()
            .unwrap_or_else(|e| panic!("publisher: {e}"))
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A recipient whose handler succeeds (or fails while `fail` says so),
/// counting the deliveries it saw; runs until its handle is dropped.
struct Recipient {
    handled: Arc<AtomicU32>,
    stats: Arc<std::sync::Mutex<Option<gilmsg::Stats>>>,
    consumer_stats: tokio::task::JoinHandle<()>,
}

fn recipient(config: &gilmsg::Config, name: &str, fail: bool) -> Recipient {
    let consumer = gilmsg::Consumer::builder(config)
        .certname(name)
        .build_inline({
            let handled = Arc::new(AtomicU32::new(0));
            let h = handled.clone();
            HANDLED.lock().unwrap().push((name.to_owned(), h));
            move |_message, _signer| {
                handled.fetch_add(1, Ordering::SeqCst);
                if fail {
                    Err("told to fail".into())
                } else {
                    Ok(())
                }
            }
        })
        .unwrap_or_else(|e| panic!("consumer {name}: {e}"));
    let handled = HANDLED
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, h)| h.clone())
        .expect("registered");
    let stats = Arc::new(std::sync::Mutex::new(None));
    let keep = stats.clone();
    let consumer_stats = tokio::spawn(async move {
        let mut consumer = consumer;
        loop {
            *keep.lock().unwrap() = Some(consumer.stats());
            tokio::select! {
                _ = consumer.next() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    Recipient {
        handled,
        stats,
        consumer_stats,
    }
}

static HANDLED: std::sync::Mutex<Vec<(String, Arc<AtomicU32>)>> = std::sync::Mutex::new(Vec::new());

impl Recipient {
    fn stats(&self) -> gilmsg::Stats {
        self.stats.lock().unwrap().clone().unwrap_or_default()
    }

    fn stop(self) {
        self.consumer_stats.abort();
    }
}

async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn three_recipients_acknowledge_a_publish() {
    within_async(LIMIT, || async {
        let Some(world) = World::new("three", &["a", "b", "c"]) else { return };
        let config = world.config();
        let recipients: Vec<Recipient> = ["a", "b", "c"].iter().map(|n| recipient(&config, n, false)).collect();
        let bus = world.publisher();
        let receipt = bus
            .publish("greeting", json!({"hello": "world", "n": 1.5}), &["a", "b", "c"], Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(receipt.acks.len(), 3);
        assert!(receipt.acks.iter().all(|a| a.digest_checked));
        assert_eq!(receipt.topic, format!("{PREFIX}.test.greeting"));
        for r in &recipients {
            assert_eq!(r.handled.load(Ordering::SeqCst), 1);
        }
        assert_eq!(bus.stats().get("publish.acked"), 1);
        // The broker's confirm may come after the ACKs (it confirms a
        // persistent message once it is on disk).
        until("the broker's confirm", Duration::from_secs(10), || bus.stats().get("publish.confirmed") >= 1).await;
        assert_eq!(bus.stats().get("ack.received"), 3, "{}", bus.stats());
        // ACKs are routed to their publisher alone: a second publisher's
        // message (every consumer of the topic ACKs it, named or not)
        // brings its three ACKs to it and none to the first.
        let other = world.publisher();
        let r2 = other.publish("greeting", json!({"k": 2}), &["a"], Duration::from_secs(10)).await.unwrap();
        assert_eq!(r2.acks.len(), 1);
        until("the other ACKs", Duration::from_secs(10), || other.stats().get("ack.received") == 3).await;
        assert_eq!(bus.stats().get("ack.received"), 3, "{}", bus.stats());
        for r in recipients {
            r.stop();
        }
    });
}

#[test]
fn an_offline_recipient_is_named_and_its_durable_queue_delivers_later() {
    within_async(LIMIT, || async {
        let Some(world) = World::new("offline", &["up", "down"]) else { return };
        let config = world.config();
        // `down` runs once so that its durable queue exists, then goes away.
        let first = gilmsg::Consumer::builder(&config).certname("down").build().unwrap();
        let _ = first.close().await;
        let up = recipient(&config, "up", false);
        let bus = world.publisher();
        let err = bus
            .publish("work", json!({"job": 7}), &["up", "down"], Duration::from_secs(2))
            .await
            .expect_err("down is offline");
        let t = err.as_timeout().expect("a timeout");
        assert_eq!(t.missing, ["down"]);
        assert_eq!(t.acked_names(), ["up"]);
        assert_eq!(t.broker, Some(gilmsg::BrokerVerdict::ConfirmedRouted), "{t}");
        assert!(err.to_string().contains("routed it to a queue"), "{err}");
        // `down` comes back: its queue holds the message; the late ACK
        // reaches the publisher and is counted.
        let down = recipient(&config, "down", false);
        until("the late delivery", Duration::from_secs(20), || down.handled.load(Ordering::SeqCst) >= 1).await;
        until("the late ACK", Duration::from_secs(20), || bus.stats().get("ack.unknown_msg_id") >= 1).await;
        assert_eq!(down.handled.load(Ordering::SeqCst), 1);
        up.stop();
        down.stop();
    });
}

#[test]
fn an_unroutable_message_fails_at_once() {
    within_async(LIMIT, || async {
        let Some(world) = World::new("unroutable", &["nobody"]) else { return };
        let bus = world.publisher();
        let started = Instant::now();
        let err = bus
            .publish("nowhere", json!({}), &["nobody"], Duration::from_secs(30))
            .await
            .expect_err("no queue is bound");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(matches!(err, gilmsg::Error::Unroutable { .. }), "{err:?}");
        assert!(err.to_string().contains("no queue would receive"), "{err}");
        assert_eq!(bus.stats().get("publish.unroutable"), 1);
    });
}

#[test]
fn a_failing_handler_is_never_acked_and_given_up_after_its_redeliveries() {
    within_async(LIMIT, || async {
        let Some(world) = World::new("failing", &["flaky"]) else { return };
        let config = world.config_with("max_redeliveries = 2");
        let flaky = recipient(&config, "flaky", true);
        let bus = world.publisher();
        let err = bus
            .publish("task", json!({"x": 1}), &["flaky"], Duration::from_secs(3))
            .await
            .expect_err("never acked");
        assert_eq!(err.as_timeout().expect("timeout").missing, ["flaky"]);
        until("the give-up", Duration::from_secs(20), || flaky.stats().get("handler.gave_up") >= 1).await;
        let stats = flaky.stats();
        // One delivery and two redeliveries, then dead-lettered or dropped.
        assert_eq!(flaky.handled.load(Ordering::SeqCst), 3, "{stats}");
        assert_eq!(stats.get("handler.requeued"), 2, "{stats}");
        assert_eq!(stats.get("ack.sent"), 0, "{stats}");
        flaky.stop();
    });
}

#[test]
fn a_redelivered_copy_reaches_the_handler_once_and_is_acked_again() {
    within_async(LIMIT, || async {
        use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
        let Some(world) = World::new("redelivery", &["once"]) else { return };
        let config = world.config();
        let once = recipient(&config, "once", false);
        // A spy queue keeps a copy of what the publisher sends.
        let conn = lapin::Connection::connect(&world.url, lapin::ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare("spy".into(), QueueDeclareOptions::default(), Default::default()).await.unwrap();
        let topic = format!("{PREFIX}.test.job");
        ch.queue_bind("spy".into(), "amq.topic".into(), topic.as_str().into(), QueueBindOptions::default(), Default::default()).await.unwrap();
        let bus = world.publisher();
        bus.publish("job", json!({"n": 1}), &["once"], Duration::from_secs(10)).await.unwrap();
        let copy = ch.basic_get("spy".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("the spy's copy");
        // The broker delivers the very same message again.
        ch.basic_publish("amq.topic".into(), topic.as_str().into(), BasicPublishOptions::default(), &copy.delivery.data, copy.delivery.properties.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        until("the re-ACK", Duration::from_secs(20), || bus.stats().get("ack.unknown_msg_id") >= 1).await;
        assert_eq!(once.handled.load(Ordering::SeqCst), 1);
        until("the counters", Duration::from_secs(5), || once.stats().get("duplicate.reacked") == 1).await;
        once.stop();
    });
}

#[test]
fn a_broker_restart_during_a_publish_gives_no_false_positive() {
    within_async(LIMIT, || async {
        // Its own node: restarting the shared one would disturb the others.
        if !rabbit::installed() {
            return;
        }
        let own = Rabbit::start(None, Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"));
        let url = own.vhost("restart").unwrap();
        let dir = tempfile::tempdir().unwrap();
        ed25519_pki(&dir.path().join("pki"), "ca", &["publisher", "r"]).unwrap();
        let path = dir.path().join("bus.toml");
        std::fs::write(
            &path,
            format!(
                "amqp_url = {url:?}\ntopic_prefix = {PREFIX:?}\nssldir = {:?}\nack_timeout = \"20s\"\n\
                 resend_initial = \"200ms\"\nresend_max = \"1s\"\nreconnect_max = \"300ms\"\nmax_message_age = \"10m\"\n",
                dir.path().join("pki").display().to_string()
            ),
        )
        .unwrap();
        let config = gilmsg::Config::from_path(&path).unwrap();
        let r = recipient(&config, "r", false);
        let bus = gilmsg::Bus::builder(&config).modname("test").certname("publisher").build().unwrap();
        // Warm: one publish acked.
        bus.publish("w", json!({"warm": true}), &["r"], Duration::from_secs(10)).await.unwrap();
        // The recipient is stopped; a publish waits for it; the broker dies
        // and comes back meanwhile.
        r.stop();
        let publisher = bus.clone();
        let publish = tokio::spawn(async move {
            publisher.publish("w", json!({"during": "restart"}), &["r"], Duration::from_secs(20)).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        own.restart(Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"));
        // Nobody has handled it yet: it must not have succeeded.
        assert!(!publish.is_finished(), "a publish completed with its recipient down");
        let again = recipient(&config, "r", false);
        let result = publish.await.unwrap();
        let receipt = result.unwrap_or_else(|e| panic!("after reconnect: {e}"));
        assert_eq!(receipt.acks.len(), 1);
        assert!(again.handled.load(Ordering::SeqCst) >= 1);
        assert!(bus.stats().get("connection.reconnected") >= 1, "{}", bus.stats());
        again.stop();
    });
}

#[test]
fn tls_with_client_certificates() {
    within_async(LIMIT, || async {
        let Some(node) = node() else { return };
        node.vhost("tls").unwrap();
        let url = node.tls_url("tls").unwrap();
        let dir = tempfile::tempdir().unwrap();
        ed25519_pki(&dir.path().join("pki"), "ca", &["publisher", "ledger"]).unwrap();
        let tls = tls_dir();
        let write = |name: &str, client: Option<&str>| {
            let path = dir.path().join(name);
            let client = client.map_or(String::new(), |c| {
                format!(
                    "keyfile = {:?}\ncertfile = {:?}\n",
                    tls.join(format!("{c}.key")).display().to_string(),
                    tls.join(format!("{c}.crt")).display().to_string()
                )
            });
            std::fs::write(
                &path,
                format!(
                    "amqp_url = {url:?}\ntopic_prefix = {PREFIX:?}\nssldir = {:?}\n[tls]\nca_cert = {:?}\n{client}",
                    dir.path().join("pki").display().to_string(),
                    tls.join("ca.crt").display().to_string()
                ),
            )
            .unwrap();
            gilmsg::Config::from_path(&path).unwrap()
        };
        let with_cert = write("tls.toml", Some("ledger"));
        let ledger = recipient(&with_cert, "ledger", false);
        let bus = gilmsg::Bus::builder(&write("tls-pub.toml", Some("publisher")))
            .modname("test")
            .certname("publisher")
            .build()
            .unwrap();
        let receipt = bus.publish("secure", json!({"tls": true}), &["ledger"], Duration::from_secs(10)).await.unwrap();
        assert_eq!(receipt.acks.len(), 1);
        // Without a client certificate the broker refuses the handshake.
        let err = gilmsg::Bus::builder(&write("no-cert.toml", None)).certname("publisher").build().expect_err("no client certificate");
        assert!(err.to_string().contains("cannot connect to the broker"), "{err}");
        ledger.stop();
    });
}
