//! An adversary forging ACKs beside a long stream of acknowledged publishes.
//!
//! Real `gilmsg-consumer` processes `r1` and `r2` behind a real relay
//! process answer honestly; an in-process `gilmsg::Bus` publishes thousands
//! of messages, many in flight at once on one handle. A fraction of the
//! publishes also name `ghost`, a recipient that is never online: only a
//! forged ACK could make one of those succeed, so any success there is a
//! false positive. Meanwhile the adversary ([`injector`]) watches the relay
//! and forges ACKs every way it can (see [`injector::Kind`]).
//!
//! `GILMSG_ADVERSARY_PUBLISHES` sets the number of publishes (default
//! 10 000); `GILMSG_ADVERSARY_SEED` the adversary's random seed. Run with
//! `--nocapture` to see the summary table.

#![forbid(unsafe_code)]

mod adversary {
    pub mod injector;
}

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adversary::injector::{Arsenal, Injector, Kind, Tally};
use gilmsg_crypto::{pki, Identity};
use gilmsg_proto::Signer;
use gilmsg_testkit::bins;
use gilmsg_testkit::raw::FakeRecipient;
use gilmsg_testkit::{within_async, Bus};
use serde_json::json;
use tokio::sync::Semaphore;

const LIMIT: Duration = Duration::from_secs(900);
const RECIPIENTS: [&str; 2] = ["r1", "r2"];
const GHOSTED: [&str; 3] = ["r1", "r2", "ghost"];
/// One publish in this many names `ghost`.
const GHOST_EVERY: u64 = 12;
const GHOST_TIMEOUT: Duration = Duration::from_millis(200);
const NORMAL_TIMEOUT: Duration = Duration::from_secs(30);
const IN_FLIGHT: usize = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// What the publishing side saw.
#[derive(Default, Debug)]
struct Outcomes {
    normal_ok: u64,
    normal_timeout: u64,
    ghost_timeout: u64,
    /// Publishes naming ghost that succeeded: must stay 0.
    false_positives: Vec<String>,
    /// Timeouts whose `acked` list names ghost: must stay 0.
    ghost_in_acked: u64,
    /// ACKs the receipts and timeouts account for.
    counted: u64,
    other_errors: Vec<String>,
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        // Pacing of a bounded poll of counters, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn forged_acks_never_complete_a_publish() {
    let publishes = env_u64("GILMSG_ADVERSARY_PUBLISHES", 10_000);
    let seed = env_u64("GILMSG_ADVERSARY_SEED", 0x5eed_9111_2026);
    within_async(LIMIT, move || async move {
        let bus = Bus::start(bins!(), &["r1", "r2", "ghost", "intruder", "mallory"]);
        let other = bus.dir().join("other-pki");
        pki::init(
            &other,
            &pki::InitOptions {
                // Same CA name as the bus's: only the signature tells them apart.
                ca_name: "gilmsg-test-ca".into(),
                validity: Duration::from_secs(86_400),
            },
        )
        .expect("second CA");
        for name in ["ghost", "r1", "r2"] {
            pki::issue(&other, name, &pki::IssueOptions::default()).expect("issue impostor");
        }
        let impostor = |name| Identity::load(&other, name).expect("load impostor");
        let arsenal = Arsenal {
            intruder: bus.identity("intruder"),
            mallory: bus.identity("mallory"),
            impostor_ghost: impostor("ghost"),
            impostor_recipients: vec![impostor("r1"), impostor("r2")],
            // Only the public certificate: ghost's key stays with the test.
            ghost_certificate: bus.identity("ghost").certificate().to_owned(),
        };

        let consumers = bus.consumers(&RECIPIENTS, &[]);
        let peer = FakeRecipient::connect(&bus, &bus.prefix());
        let injector = Injector::start(peer, arsenal, bus.ack_topic(), seed);
        let publisher = bus.publisher();

        let started = Instant::now();
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        let mut outcomes = Outcomes::default();
        let mut ghost_publishes = 0u64;
        for k in 0..publishes {
            let permit = slots.clone().acquire_owned().await.expect("semaphore");
            let ghost = k % GHOST_EVERY == GHOST_EVERY - 1;
            ghost_publishes += u64::from(ghost);
            let handle = publisher.clone();
            tasks.spawn(async move {
                let result = if ghost {
                    handle
                        .publish("adv", json!({"k": k}), &GHOSTED, GHOST_TIMEOUT)
                        .await
                } else {
                    handle
                        .publish("adv", json!({"k": k}), &RECIPIENTS, NORMAL_TIMEOUT)
                        .await
                };
                drop(permit);
                (ghost, result)
            });
            while let Some(joined) = tasks.try_join_next() {
                record(&mut outcomes, joined.expect("publish task"));
            }
        }
        while let Some(joined) = tasks.join_next().await {
            record(&mut outcomes, joined.expect("publish task"));
        }
        let publishing = started.elapsed();

        // Let every forgery and every honest ACK reach the publisher.
        injector.stop_forging();
        let tally = injector.tally.clone();
        wait_until(
            "every forged ACK to come back through the relay",
            Duration::from_secs(60),
            || Tally::total(&tally.sent) == Tally::total(&tally.echoed),
        )
        .await;
        let mut stats = publisher.stats();
        wait_until(
            "the publisher to judge every ACK on the bus",
            Duration::from_secs(60),
            || {
                stats = publisher.stats();
                let seen = tally.honest_acks.load(std::sync::atomic::Ordering::SeqCst)
                    + Tally::total(&tally.echoed);
                stats.get("ack.received") == seen
            },
        )
        .await;
        let tally = injector.stop();
        let consumer_stats: Vec<gilmsg::Stats> = consumers.iter().map(|c| c.stats()).collect();

        report(
            publishes,
            ghost_publishes,
            publishing,
            &outcomes,
            &tally,
            &stats,
            &consumer_stats,
        );

        // The one promise.
        assert!(
            outcomes.false_positives.is_empty(),
            "FALSE POSITIVE: publishes naming the offline ghost succeeded: {:?}",
            outcomes.false_positives
        );
        assert_eq!(
            outcomes.ghost_in_acked, 0,
            "ghost was listed as having acked"
        );
        assert!(
            outcomes.other_errors.is_empty(),
            "{:?}",
            outcomes.other_errors
        );
        assert_eq!(
            outcomes.normal_ok + outcomes.normal_timeout + outcomes.ghost_timeout,
            publishes
        );
        assert_eq!(outcomes.ghost_timeout, ghost_publishes);

        // Every counted ACK is accounted for by a receipt or a timeout's
        // `acked` list (all of them by r1/r2 with a checked digest).
        assert_eq!(stats.get("ack.counted"), outcomes.counted, "{stats}");
        assert_eq!(stats.get("publish.acked"), outcomes.normal_ok, "{stats}");
        assert_eq!(
            stats.get("publish.timed_out"),
            outcomes.normal_timeout + outcomes.ghost_timeout,
            "{stats}"
        );

        // Forgeries were sent and every one reached the publisher: it reads
        // the same relay as the adversary, with no high-water mark, so the
        // ACK frames it received are exactly the honest ones plus the forged.
        let sent = Tally::total(&tally.sent);
        let echoed = Tally::total(&tally.echoed);
        let honest = tally.honest_acks.load(std::sync::atomic::Ordering::SeqCst);
        assert!(sent > 0, "the adversary forged nothing");
        assert_eq!(echoed, sent, "every forgery reached the bus");
        let received = stats.get("ack.received");
        assert_eq!(received, honest + echoed, "{stats}");
        // And every one was refused. Consumers batch honest ACKs, so the
        // counters mix frames and entries; what holds exactly:
        // - refusals that only a forgery can cause stay within the forged
        //   entries sent;
        // - every forged frame landed in some refusal counter: forged frames
        //   are refused as a whole (invalid, other CA, bad signature,
        //   unsigned, unknown msg_id) or entry by entry (not a recipient;
        //   a byte-for-byte replay of an honest ACK as a duplicate), and
        //   none of them is counted, since `ack.counted` is exactly what the
        //   receipts list, every entry by r1 or r2, keys the adversary lacks.
        let forgery_only = forgery_only(&stats);
        assert!(forgery_only <= tally.forged_entries(), "{stats}");
        let refused = refusal_total(&stats);
        assert!(
            refused >= echoed,
            "refused {refused} < forged {echoed}: {stats}"
        );
        for counter in [
            "ack.not_a_recipient",
            "ack.rejected.untrusted_certificate",
            "ack.rejected.bad_signature",
            "ack.rejected.unsigned",
            "ack.unknown_msg_id",
        ] {
            assert!(
                stats.get(counter) > 0,
                "no forgery was refused as {counter}: {stats}"
            );
        }

        // Positive control: the harness can make publishes succeed.
        let normal = publishes - ghost_publishes;
        assert!(
            outcomes.normal_ok * 10 >= normal * 9,
            "only {} of {normal} ordinary publishes succeeded",
            outcomes.normal_ok
        );
        for (c, s) in consumers.iter().zip(&consumer_stats) {
            assert!(s.get("handler.ok") >= outcomes.normal_ok, "{}: {s}", c.name);
        }
    });
}

fn record(outcomes: &mut Outcomes, (ghost, result): (bool, gilmsg::Result<gilmsg::Receipt>)) {
    match result {
        Ok(receipt) if ghost => outcomes.false_positives.push(receipt.msg_id),
        Ok(receipt) => {
            let names: Vec<&str> = receipt.acks.iter().map(|a| a.recipient.as_str()).collect();
            assert_eq!(names, RECIPIENTS, "receipt {receipt:?}");
            assert!(receipt.acks.iter().all(|a| a.digest_checked), "{receipt:?}");
            outcomes.counted += receipt.acks.len() as u64;
            outcomes.normal_ok += 1;
        }
        Err(e) => match e.as_timeout() {
            Some(t) => {
                let allowed: HashSet<&str> = RECIPIENTS.into_iter().collect();
                if t.acked.iter().any(|a| a.recipient == "ghost") {
                    outcomes.ghost_in_acked += 1;
                }
                assert!(
                    t.acked
                        .iter()
                        .all(|a| allowed.contains(a.recipient.as_str())),
                    "{e}"
                );
                outcomes.counted += t.acked.len() as u64;
                if ghost {
                    assert!(t.missing.iter().any(|m| m == "ghost"), "{e}");
                    outcomes.ghost_timeout += 1;
                } else {
                    outcomes.normal_timeout += 1;
                }
            }
            None => outcomes.other_errors.push(e.to_string()),
        },
    }
}

/// Refusals an honest recipient's ACK never causes.
fn forgery_only(stats: &gilmsg::Stats) -> u64 {
    stats.get("ack.not_a_recipient")
        + stats.get("ack.digest_mismatch")
        + stats.get("ack.other_topic")
        + stats.sum("ack.rejected.")
        + stats.sum("ack.invalid.")
}

/// Every way the publisher refuses or ignores an ACK.
fn refusal_total(stats: &gilmsg::Stats) -> u64 {
    stats.get("ack.unknown_msg_id")
        + stats.get("ack.not_a_recipient")
        + stats.get("ack.duplicate")
        + stats.get("ack.digest_mismatch")
        + stats.get("ack.other_topic")
        + stats.get("ack.wrong_msg_id")
        + stats.sum("ack.rejected.")
        + stats.sum("ack.invalid.")
}

fn report(
    publishes: u64,
    ghost_publishes: u64,
    publishing: Duration,
    outcomes: &Outcomes,
    tally: &Tally,
    stats: &gilmsg::Stats,
    consumers: &[gilmsg::Stats],
) {
    let sent = Tally::snapshot(&tally.sent);
    let echoed = Tally::snapshot(&tally.echoed);
    println!("\n== adversary summary ==");
    println!(
        "publishes: {publishes} ({ghost_publishes} naming ghost) in {:.1} s, {IN_FLIGHT} in flight",
        publishing.as_secs_f64()
    );
    println!(
        "outcomes: ordinary ok {}  ordinary timeout {}  ghost timeout {}  FALSE POSITIVES {}",
        outcomes.normal_ok,
        outcomes.normal_timeout,
        outcomes.ghost_timeout,
        outcomes.false_positives.len()
    );
    println!(
        "adversary saw: {} messages ({} skipped while catching up), {} re-sends, {} honest ACK frames",
        tally.messages.load(std::sync::atomic::Ordering::SeqCst),
        tally.skipped.load(std::sync::atomic::Ordering::SeqCst),
        tally.resends.load(std::sync::atomic::Ordering::SeqCst),
        tally.honest_acks.load(std::sync::atomic::Ordering::SeqCst)
    );
    println!(
        "{:<18} {:>8} {:>8}  refused as",
        "forgery", "sent", "reached"
    );
    for kind in Kind::ALL {
        println!(
            "{:<18} {:>8} {:>8}  {}",
            format!("{kind:?}"),
            sent.get(&kind).copied().unwrap_or(0),
            echoed.get(&kind).copied().unwrap_or(0),
            kind.expected()
        );
    }
    println!(
        "{:<18} {:>8} {:>8}  ({} forged entries)",
        "total",
        sent.values().sum::<u64>(),
        echoed.values().sum::<u64>(),
        tally.forged_entries()
    );
    println!(
        "refused: {} by counters only forgeries reach, {} in all (incl. honest late/duplicate ACKs)",
        forgery_only(stats),
        refusal_total(stats)
    );
    let ack_counters: BTreeMap<&String, &u64> = stats
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("ack.") || k.starts_with("publish."))
        .collect();
    println!("publisher counters:");
    for (k, v) in ack_counters {
        println!("  {k:<40} {v:>8}");
    }
    for (i, s) in consumers.iter().enumerate() {
        println!("consumer {}: {s}", RECIPIENTS[i]);
    }
}
