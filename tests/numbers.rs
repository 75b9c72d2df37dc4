//! Number literals, which several texts can spell for one signed value.
//!
//! The signature covers the canonical text of every number (Python's
//! `repr`), but JSON allows others for the same double: a relay can turn
//! `0.1` into `0.1000000000000000000000001` and the signature still
//! verifies. A handler must never see such a value, and the publisher must
//! never get a receipt for it; nor may a publisher silently sign another
//! number than the one it was given.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gilmsg_testkit::bins;
use gilmsg_testkit::raw::{self, RawPub};
use gilmsg_testkit::{within, within_async, Bus};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const RUN: Duration = Duration::from_secs(20);
const REWRITTEN: &str = "0.1000000000000000000000001";

/// A relay of its own between the bus relay's outbound and one consumer,
/// rewriting `"amount":0.1` into the longer literal for the same double.
struct TamperingRelay {
    endpoint: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TamperingRelay {
    fn start(bus: &Bus) -> TamperingRelay {
        let context = zmq::Context::new();
        let sub = context.socket(zmq::SUB).expect("sub");
        sub.set_subscribe(b"").expect("subscribe");
        sub.connect(&bus.outbound).expect("connect to the relay");
        let (out, endpoint) = raw::bind_xpub(&context);
        let stop = Arc::new(AtomicBool::new(false));
        let (seen_tx, seen_rx) = mpsc::channel();
        let probe = format!("numbers-probe.{}", std::process::id());
        let thread = {
            let stop = stop.clone();
            let probe = probe.clone();
            std::thread::spawn(move || {
                let _context = context;
                while !stop.load(Ordering::Relaxed) {
                    let mut items = [sub.as_poll_item(zmq::POLLIN), out.as_poll_item(zmq::POLLIN)];
                    if zmq::poll(&mut items, 50).is_err() {
                        break;
                    }
                    let (from_bus, subscriptions) =
                        (items[0].is_readable(), items[1].is_readable());
                    if subscriptions {
                        // Subscription messages from the consumer: read so
                        // the XPUB registers them.
                        let _ = out.recv_multipart(zmq::DONTWAIT);
                    }
                    if !from_bus {
                        continue;
                    }
                    let Ok(mut frames) = sub.recv_multipart(zmq::DONTWAIT) else {
                        continue;
                    };
                    if frames.first().map(Vec::as_slice) == Some(probe.as_bytes()) {
                        let _ = seen_tx.send(());
                        continue;
                    }
                    if let Some(body) = frames.get_mut(1) {
                        let text = String::from_utf8_lossy(body)
                            .replace("\"amount\":0.1}", &format!("\"amount\":{REWRITTEN}}}"));
                        *body = text.into_bytes();
                    }
                    let last = frames.len().saturating_sub(1);
                    for (i, frame) in frames.iter().enumerate() {
                        let flags = if i < last { zmq::SNDMORE } else { 0 };
                        let _ = out.send(frame.as_slice(), flags);
                    }
                }
            })
        };
        // Until a probe sent into the bus relay comes out here, the bus
        // relay may not have our subscription yet.
        let raw = RawPub::connect(&bus.inbound);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "the probe never came through");
            raw.send(&[probe.as_bytes(), b"probe"]);
            if seen_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                break;
            }
        }
        TamperingRelay {
            endpoint,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TamperingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_relayed_body_with_a_rewritten_number_is_refused_and_never_acked() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["rcpt"]);
        let tamper = TamperingRelay::start(&bus);
        // The consumer hears the bus only through the tampering relay; its
        // ACKs go back through the bus relay as usual.
        let config = bus.dir().join("tampered.toml");
        bus.write_config(&config, "", &format!("[{:?}]", tamper.endpoint));
        let consumer = bus.consumer_with("rcpt", &config, "debug", &[]);
        let publisher = bus.publisher();

        // Positive control: a body the relay leaves alone goes through it.
        let receipt = publisher
            .publish(
                "pay",
                json!({"amount": 2}),
                &["rcpt"],
                Duration::from_secs(5),
            )
            .await
            .expect("an untouched body is acked through the tampering relay");
        consumer.wait_stdout(&receipt.msg_id, Duration::from_secs(5));

        let result = publisher
            .publish(
                "pay",
                json!({"amount": 0.1}),
                &["rcpt"],
                Duration::from_secs(2),
            )
            .await;
        match result {
            Ok(receipt) => panic!(
                "a receipt for a body whose handler saw {REWRITTEN} instead of the signed 0.1: \
                 {receipt:?}"
            ),
            Err(e) => {
                let timeout = e.as_timeout().unwrap_or_else(|| panic!("{e}"));
                assert_eq!(timeout.missing, ["rcpt"], "{e}");
            }
        }
        let stats = consumer.wait_stats("the refusal", Duration::from_secs(5), |s| {
            s.get("invalid.non_canonical_number") >= 1
        });
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");
        assert_eq!(stats.get("handler.ok"), 1, "{stats}");
        // It said why, at debug level.
        let stderr = consumer.stderr().join("\n");
        assert!(stderr.contains("invalid.non_canonical_number"), "{stderr}");
        assert!(stderr.contains(REWRITTEN), "{stderr}");
        // Nothing else was printed: the only handled message is the control.
        assert_eq!(consumer.next_stdout(Duration::from_millis(200)), None);
    })
}

fn logger_args(bus: &Bus) -> Vec<&str> {
    vec![
        "--config",
        bus.config_path.to_str().expect("utf-8 path"),
        "--certname",
        "publisher",
        "--recipients",
        "a",
        "--json-input",
        "--print-receipt",
    ]
}

#[test]
fn the_publisher_refuses_a_number_it_would_sign_as_another_and_normalises_exact_ones() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let a = bus.consumer("a", &[]);

        let mut args = logger_args(&bus);
        args.extend(["--message", r#"{"n": 9007199254740993.0}"#]);
        let started = Instant::now();
        let out = bus.logger(&args, "", RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "refused at once: {out:?}"
        );
        assert!(out.stderr.contains("9007199254740993.0"), "{out:?}");
        assert!(out.stderr.contains("9007199254740992.0"), "{out:?}");

        // Same value, another spelling: sent as the canonical text, which is
        // what the handler sees and the ACK covers.
        let mut args = logger_args(&bus);
        args.extend([
            "--message",
            r#"{"n": 1.10, "big": 9007199254740993, "e": 1E5}"#,
        ]);
        let out = bus.logger(&args, "", RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        let receipt: Value = serde_json::from_str(out.stdout.trim()).expect("receipt");
        let msg_id = receipt["msg_id"].as_str().expect("msg_id");
        let line = a.wait_stdout(msg_id, Duration::from_secs(5));
        assert!(
            line.contains(r#""msg":{"big":9007199254740993,"e":100000.0,"n":1.1}"#),
            "{line}"
        );
    })
}
