//! The speed targets of issue 10, evaluated against floors measured in the
//! same run: absolute times differ by 2x between machines of this kind, so a
//! target is a ratio to what ZeroMQ and the signatures cost here and now.
//!
//! The floors, from the run's own sections:
//! - `RTT`: the raw ZeroMQ round trip's p50 (`floor_zmq_rtt`);
//! - `S`, `V`: one Ed25519 sign and one verify with the libraries gilmsg
//!   uses, alone (ring signs, ed25519-dalek verifies:
//!   `crypto.ed25519.sign_raw_us`, `verify_raw_us`): what any
//!   implementation pays, without our base64, certificate cache or trust
//!   checks, which count as our overhead. `V` is a single verification: a
//!   consumer that checks a burst's signatures in one batch pays less a
//!   signature (`verify_batch_us`), and may beat the throughput floors;
//! - `cores`: the machine's (2 on the reference VMs).
//!
//! The targets (a latency must stay at or under its limit times the floor,
//! a throughput at or over; the ratio printed is measured / floor):
//! - 1 recipient, warm: p50 ≤ 1.3 × (RTT + 2S + 2V), p99 ≤ 2 × the same;
//! - 10 recipients, warm: p50 ≤ 1.3 × (RTT + S + 10V + (10V + 10S) / cores):
//!   the publisher signs once and verifies ten ACKs, the consumers verify
//!   and sign ten times between them, spread over the cores;
//! - throughput on one handle: ≥ 0.65 × cores / (S + V) with 1 recipient,
//!   ≥ 0.65 × cores / (S + 10V) with 10;
//! - the consumer's steady-state RSS over the soak ≤ 16 MiB.
//!
//! Beside them, not targets: the 1-recipient p50 and p99 measured in blocks
//! interleaved with raw round trips, against `RTT + 2S + 2V` with that
//! run's own RTT (`latency_warm_publish.1_recipient_interleaved`); and the
//! 10-recipient p50 against the same floor
//! with `RTT10` (`floor_zmq_fanout`, the raw round trip to ten echo
//! processes) in place of `RTT`, because ten processes on these cores cost
//! the transport several times one round trip.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::get;

/// The consumer's steady-state RSS limit over the soak.
const RSS_LIMIT_MIB: f64 = 16.0;

/// Which way a target goes.
#[derive(Clone, Copy)]
enum Bound {
    /// Measured ≤ limit × floor.
    AtMost(f64),
    /// Measured ≥ limit × floor.
    AtLeast(f64),
}

/// One target: its name, floor formula and value, what was measured.
struct Target {
    name: String,
    formula: String,
    unit: &'static str,
    floor: f64,
    bound: Bound,
    measured: f64,
}

impl Target {
    fn json(&self) -> Value {
        let (kind, factor) = match self.bound {
            Bound::AtMost(f) => ("at_most", f),
            Bound::AtLeast(f) => ("at_least", f),
        };
        let ratio = self.measured / self.floor;
        let met = match self.bound {
            Bound::AtMost(f) => ratio <= f,
            Bound::AtLeast(f) => ratio >= f,
        };
        let known = self.floor.is_finite() && self.measured.is_finite();
        json!({
            "target": self.name,
            "formula": self.formula,
            "unit": self.unit,
            "floor": self.floor,
            "bound": kind,
            "factor": factor,
            "limit": factor * self.floor,
            "measured": self.measured,
            "ratio": ratio,
            "verdict": if !known { "not measured" } else if met { "met" } else { "missed" },
        })
    }
}

/// The floors and every target, from a report's JSON (missing sections
/// give "not measured").
pub fn evaluate(report: &Value) -> Value {
    let rtt = get(report, "/floor_zmq_rtt/latency/p50_us");
    let s = get(report, "/crypto/ed25519/sign_raw_us");
    let v = get(report, "/crypto/ed25519/verify_raw_us");
    let cores = report
        .pointer("/machine/cores")
        .and_then(Value::as_f64)
        .filter(|c| *c >= 1.0)
        .unwrap_or(2.0);
    let one = rtt + 2.0 * s + 2.0 * v;
    let ten = rtt + s + 10.0 * v + (10.0 * v + 10.0 * s) / cores;
    let rate = |per_message_us: f64| cores * 1e6 / per_message_us;
    // The latency and throughput targets of one publisher loop: its own
    // thread (the library's default; keys without suffix), or a task on the
    // caller's runtime (`_on_runtime`, `BusBuilder::run_on_current_runtime`).
    let of_loop = |suffix: &str, label: &str| {
        let latency = |path: &str| get(report, &format!("/latency_warm_publish{suffix}/{path}"));
        let throughput = |k: u32| {
            get(
                report,
                &format!("/throughput{suffix}/{k}_recipients/msgs_per_s"),
            )
        };
        [
            Target {
                name: format!("warm latency, 1 recipient, p50{label}"),
                formula: "1.3 × (RTT + 2S + 2V)".into(),
                unit: "µs",
                floor: one,
                bound: Bound::AtMost(1.3),
                measured: latency("1_recipients/p50_us"),
            },
            Target {
                name: format!("warm latency, 1 recipient, p99{label}"),
                formula: "2 × (RTT + 2S + 2V)".into(),
                unit: "µs",
                floor: one,
                bound: Bound::AtMost(2.0),
                measured: latency("1_recipients/p99_us"),
            },
            Target {
                name: format!("warm latency, 10 recipients, p50{label}"),
                formula: format!("1.3 × (RTT + S + 10V + (10V + 10S) / {cores})"),
                unit: "µs",
                floor: ten,
                bound: Bound::AtMost(1.3),
                measured: latency("10_recipients/p50_us"),
            },
            Target {
                name: format!("throughput, 1 recipient{label}"),
                formula: format!("0.65 × {cores} cores / (S + V)"),
                unit: "msgs/s",
                floor: rate(s + v),
                bound: Bound::AtLeast(0.65),
                measured: throughput(1),
            },
            Target {
                name: format!("throughput, 10 recipients{label}"),
                formula: format!("0.65 × {cores} cores / (S + 10V)"),
                unit: "msgs/s",
                floor: rate(s + 10.0 * v),
                bound: Bound::AtLeast(0.65),
                measured: throughput(10),
            },
        ]
    };
    let mut targets = Vec::from(of_loop("", ""));
    if report.get("latency_warm_publish_on_runtime").is_some()
        || report.get("throughput_on_runtime").is_some()
    {
        targets.extend(of_loop("_on_runtime", ", loop on the caller's runtime"));
    }
    targets.push(Target {
        name: match report
            .pointer("/soak/dedupe_capacity")
            .and_then(Value::as_u64)
        {
            Some(n) => format!(
                "consumer steady-state RSS over the soak (dedupe_capacity {n}, not the default)"
            ),
            None => "consumer steady-state RSS over the soak (default dedupe_capacity)".into(),
        },
        formula: format!("{RSS_LIMIT_MIB} MiB"),
        unit: "MiB",
        floor: RSS_LIMIT_MIB,
        bound: Bound::AtMost(1.0),
        measured: get(report, "/soak/consumer_steady_rss_kib") / 1024.0,
    });
    // Two views that do not depend on how busy the machine was: the
    // 1-recipient p50 taken apart, and the throughput the measured CPU per
    // message would allow if this run had the cores to itself.
    let p50 = get(report, "/latency_warm_publish/1_recipients/p50_us");
    let handoffs = get(report, "/latency_warm_publish/plain_publish/p50_us")
        - get(report, "/crypto/ed25519/sign_us");
    let cpu_bound = |k: usize| {
        let per_message = get(
            report,
            &format!("/throughput/{k}_recipients/cpu/total_us_per_msg"),
        );
        json!({"cpu_us_per_msg": per_message, "msgs_per_s": rate(per_message)})
    };
    // What the raw transport costs per message on its own (pipelined round
    // trips, no crypto, no JSON): added to S + V it bounds the 1-recipient
    // rate any implementation on libzmq could reach here.
    let transport = get(report, "/floor_zmq_rtt/rate/cpu/total_us_per_msg");
    // The 10-recipient floor counts the transport once (RTT). Ten consumer
    // processes on these cores cost more than one: the raw fan-out round
    // trip to ten echo processes (no crypto, no JSON) is that cost alone.
    let rtt10 = get(report, "/floor_zmq_fanout/10_echoes/latency/p50_us");
    let ten_fanout = rtt10 + s + 10.0 * v + (10.0 * v + 10.0 * s) / cores;
    let p50_10 = get(report, "/latency_warm_publish/10_recipients/p50_us");
    // The 1-recipient latency against a raw round trip measured in the
    // same seconds (blocks of publishes and round trips, interleaved), for
    // each publisher loop.
    let interleaved_of = |suffix: &str| {
        let interleaved = |path: &str| {
            get(
                report,
                &format!("/latency_warm_publish{suffix}/1_recipient_interleaved/{path}"),
            )
        };
        let floor = interleaved("rtt/p50_us") + 2.0 * s + 2.0 * v;
        json!({
            "rtt_us": interleaved("rtt/p50_us"),
            "floor_us": floor,
            "p50_us": interleaved("publish/p50_us"),
            "p99_us": interleaved("publish/p99_us"),
            "p50_ratio": interleaved("publish/p50_us") / floor,
            "p99_ratio": interleaved("publish/p99_us") / floor,
            "block": interleaved("block"),
        })
    };
    json!({
        "floors": {"rtt_us": rtt, "sign_us": s, "verify_us": v, "cores": cores},
        "transport_floor": {
            "msgs_per_s": get(report, "/floor_zmq_rtt/rate/msgs_per_s"),
            "cpu_us_per_msg": transport,
            "with_crypto_msgs_per_s": rate(transport + s + v),
            "target_1_msgs_per_s": 0.65 * rate(s + v),
        },
        "targets": targets.iter().map(Target::json).collect::<Vec<_>>(),
        "one_recipient_p50": {
            "p50_us": p50,
            "rtt_us": rtt,
            "crypto_us": 2.0 * s + 2.0 * v,
            "handoffs_us": handoffs,
            "rest_us": p50 - one - handoffs,
        },
        "one_recipient_interleaved": interleaved_of(""),
        "one_recipient_interleaved_on_runtime": interleaved_of("_on_runtime"),
        "ten_recipients_fanout": {
            "rtt10_us": rtt10,
            "rtt10_cpu_us": get(report, "/floor_zmq_fanout/10_echoes/cpu/total_us_per_msg"),
            "floor_us": ten_fanout,
            "p50_us": p50_10,
            "ratio": p50_10 / ten_fanout,
        },
        "throughput_cpu_bound": {
            "1_recipients": cpu_bound(1),
            "10_recipients": cpu_bound(10),
            "floor_1": rate(s + v),
            "floor_10": rate(s + 10.0 * v),
        },
    })
}

/// The targets as a Markdown table, with the floors they stand on.
pub fn markdown(report: &Value) -> String {
    let mut md = String::new();
    let Some(t) = report.get("targets") else {
        return md;
    };
    let _ = writeln!(
        md,
        "\n| floor, this run | µs |\n|---|---|\n| RTT: raw ZeroMQ round trip, p50 | {:.1} |\n| S: Ed25519 sign (ring alone) | {:.1} |\n| V: Ed25519 verify (ed25519-dalek alone, one signature) | {:.1} |",
        get(t, "/floors/rtt_us"),
        get(t, "/floors/sign_us"),
        get(t, "/floors/verify_us"),
    );
    let _ = writeln!(
        md,
        "\n| target | limit | floor | limit value | measured | ratio to floor | verdict |\n|---|---|---|---|---|---|---|"
    );
    for row in t
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("?");
        let unit = text("unit");
        let number = |k: &str| {
            let x = get(row, &format!("/{k}"));
            if unit == "msgs/s" {
                format!("{x:.0} {unit}")
            } else {
                format!("{x:.1} {unit}")
            }
        };
        let bound = if text("bound") == "at_most" {
            "≤"
        } else {
            "≥"
        };
        let _ = writeln!(
            md,
            "| {} | {bound} {} | {} | {} | {} | {:.2}× (limit {:.2}×) | {} |",
            text("target"),
            text("formula"),
            number("floor"),
            number("limit"),
            number("measured"),
            get(row, "/ratio"),
            get(row, "/factor"),
            text("verdict"),
        );
    }
    // A run without the latency section (`--only amqp`, say) has no
    // decomposition to print.
    if get(t, "/one_recipient_p50/p50_us").is_finite() {
        let _ = writeln!(
            md,
            "\n1 recipient, p50 {:.0} µs = RTT {:.0} + 2S + 2V {:.0} + two thread hand-offs ≈ {:.0} (plain publish p50 less one signature) + the rest {:.0} µs.",
            get(t, "/one_recipient_p50/p50_us"),
            get(t, "/one_recipient_p50/rtt_us"),
            get(t, "/one_recipient_p50/crypto_us"),
            get(t, "/one_recipient_p50/handoffs_us"),
            get(t, "/one_recipient_p50/rest_us"),
        );
    }
    for (key, label) in [
        ("one_recipient_interleaved", ""),
        (
            "one_recipient_interleaved_on_runtime",
            ", the publisher's loop on the caller's runtime",
        ),
    ] {
        let at = |path: &str| get(t, &format!("/{key}/{path}"));
        if !at("p50_ratio").is_finite() {
            continue;
        }
        let _ = writeln!(
            md,
            "\n1 recipient{label}, interleaved with the raw round trip (blocks of {:.0} publishes and {:.0} round trips in turns, so both from the same seconds): RTT {:.1} µs, RTT + 2S + 2V = {:.1} µs; p50 {:.1} µs is {:.2}× that (target 1.3×), p99 {:.1} µs is {:.2}× (target 2×).",
            at("block"),
            at("block"),
            at("rtt_us"),
            at("floor_us"),
            at("p50_us"),
            at("p50_ratio"),
            at("p99_us"),
            at("p99_ratio"),
        );
    }
    if get(t, "/ten_recipients_fanout/ratio").is_finite() {
        let _ = writeln!(
            md,
            "\n10 recipients against the raw fan-out round trip to 10 echo processes, RTT10 = {:.0} µs ({:.1}× RTT; {:.0} µs of CPU each, all processes): RTT10 + S + 10V + (10V + 10S) / cores = {:.0} µs, and p50 {:.0} µs is {:.2}× that. The target's floor counts the transport once (RTT).",
            get(t, "/ten_recipients_fanout/rtt10_us"),
            get(t, "/ten_recipients_fanout/rtt10_us") / get(t, "/floors/rtt_us"),
            get(t, "/ten_recipients_fanout/rtt10_cpu_us"),
            get(t, "/ten_recipients_fanout/floor_us"),
            get(t, "/ten_recipients_fanout/p50_us"),
            get(t, "/ten_recipients_fanout/ratio"),
        );
    }
    if get(t, "/transport_floor/cpu_us_per_msg").is_finite() {
        let _ = writeln!(
            md,
            "\nRaw ZeroMQ pipelined (the message out, the same bytes back; no crypto, no JSON): {:.0} round trips/s, {:.1} µs of CPU each (both processes, all threads). With S + V added, the cores allow {:.0} msgs/s: the 1-recipient throughput target ({:.0} msgs/s) is {:.2}× that.",
            get(t, "/transport_floor/msgs_per_s"),
            get(t, "/transport_floor/cpu_us_per_msg"),
            get(t, "/transport_floor/with_crypto_msgs_per_s"),
            get(t, "/transport_floor/target_1_msgs_per_s"),
            get(t, "/transport_floor/target_1_msgs_per_s") / get(t, "/transport_floor/with_crypto_msgs_per_s"),
        );
    }
    for (k, floor) in [(1, "floor_1"), (10, "floor_10")] {
        let base = format!("/throughput_cpu_bound/{k}_recipients");
        if !get(t, &format!("{base}/cpu_us_per_msg")).is_finite() {
            continue;
        }
        let _ = writeln!(
            md,
            "\nThroughput, {k} recipient(s), if the run had had the cores to itself: {:.0} µs of CPU per message (all threads of all processes) allows {:.0} msgs/s, {:.2}× the floor.",
            get(t, &format!("{base}/cpu_us_per_msg")),
            get(t, &format!("{base}/msgs_per_s")),
            get(t, &format!("{base}/msgs_per_s")) / get(t, &format!("/throughput_cpu_bound/{floor}")),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outside_run_of_old_main_reads_as_it_did() {
        // RTT 120, S 21, V 38; p50 362 µs is 1.52 × 238 µs.
        let report = json!({
            "machine": {"cores": 2},
            "floor_zmq_rtt": {"latency": {"p50_us": 120.0}},
            "crypto": {"ed25519": {"sign_raw_us": 21.0, "verify_raw_us": 38.0}},
            "latency_warm_publish": {"1_recipients": {"p50_us": 362.0, "p99_us": 400.0}},
            "throughput": {"1_recipients": {"msgs_per_s": 17_818.0}},
        });
        let t = evaluate(&report);
        let rows = t["targets"].as_array().unwrap();
        assert!((rows[0]["floor"].as_f64().unwrap() - 238.0).abs() < 1e-9);
        assert!((rows[0]["ratio"].as_f64().unwrap() - 1.52).abs() < 0.01);
        assert_eq!(rows[0]["verdict"], "missed");
        assert_eq!(rows[1]["verdict"], "met");
        assert!((rows[3]["ratio"].as_f64().unwrap() - 0.525).abs() < 0.01);
        assert_eq!(rows[3]["verdict"], "missed");
        assert_eq!(rows[4]["verdict"], "not measured");
        assert_eq!(rows[5]["verdict"], "not measured");
        assert!(markdown(&json!({ "targets": t })).contains("| missed |"));
        // No fan-out floor nor interleaved run in that run: no lines for them.
        assert!(!markdown(&json!({ "targets": t })).contains("RTT10"));
        assert!(!markdown(&json!({ "targets": t })).contains("interleaved"));
    }

    #[test]
    fn the_ten_recipient_p50_is_also_read_against_the_fan_out_floor() {
        // RTT10 300, S 20, V 30, 2 cores: 300 + 20 + 300 + (300 + 200) / 2 = 870.
        let report = json!({
            "machine": {"cores": 2},
            "floor_zmq_rtt": {"latency": {"p50_us": 100.0}},
            "floor_zmq_fanout": {"10_echoes": {
                "latency": {"p50_us": 300.0},
                "cpu": {"total_us_per_msg": 450.0},
            }},
            "crypto": {"ed25519": {"sign_raw_us": 20.0, "verify_raw_us": 30.0}},
            "latency_warm_publish": {"10_recipients": {"p50_us": 1044.0}},
        });
        let t = evaluate(&report);
        let fanout = &t["ten_recipients_fanout"];
        assert!((fanout["floor_us"].as_f64().unwrap() - 870.0).abs() < 1e-9);
        assert!((fanout["ratio"].as_f64().unwrap() - 1.2).abs() < 1e-9);
        // The target itself still uses RTT: 100 + 20 + 300 + 250 = 670.
        let rows = t["targets"].as_array().unwrap();
        assert!((rows[2]["floor"].as_f64().unwrap() - 670.0).abs() < 1e-9);
        let md = markdown(&json!({ "targets": t }));
        assert!(
            md.contains("RTT10 = 300 µs (3.0× RTT; 450 µs of CPU"),
            "{md}"
        );
        assert!(
            md.contains("= 870 µs, and p50 1044 µs is 1.20× that"),
            "{md}"
        );
    }

    #[test]
    fn the_interleaved_one_recipient_run_has_its_own_floor() {
        // RTT 80 in the same seconds, S 20, V 30: floor 180; p50 234 = 1.3×.
        let report = json!({
            "machine": {"cores": 2},
            "floor_zmq_rtt": {"latency": {"p50_us": 120.0}},
            "crypto": {"ed25519": {"sign_raw_us": 20.0, "verify_raw_us": 30.0}},
            "latency_warm_publish": {"1_recipient_interleaved": {
                "block": 50,
                "publish": {"p50_us": 234.0, "p99_us": 360.0},
                "rtt": {"p50_us": 80.0},
            }},
        });
        let t = evaluate(&report);
        let view = &t["one_recipient_interleaved"];
        assert!((view["floor_us"].as_f64().unwrap() - 180.0).abs() < 1e-9);
        assert!((view["p50_ratio"].as_f64().unwrap() - 1.3).abs() < 1e-9);
        assert!((view["p99_ratio"].as_f64().unwrap() - 2.0).abs() < 1e-9);
        let md = markdown(&json!({ "targets": t }));
        assert!(
            md.contains("RTT 80.0 µs, RTT + 2S + 2V = 180.0 µs; p50 234.0 µs is 1.30× that"),
            "{md}"
        );
    }

    #[test]
    fn the_loop_on_the_callers_runtime_gets_its_own_rows_beside_the_default() {
        // Floor 120 + 40 + 60 = 220: 264 is 1.2× (met), 308 is 1.4× (missed).
        let report = json!({
            "machine": {"cores": 2},
            "floor_zmq_rtt": {"latency": {"p50_us": 120.0}},
            "crypto": {"ed25519": {"sign_raw_us": 20.0, "verify_raw_us": 30.0}},
            "latency_warm_publish": {"1_recipients": {"p50_us": 308.0, "p99_us": 400.0}},
            "latency_warm_publish_on_runtime": {
                "1_recipients": {"p50_us": 264.0, "p99_us": 390.0},
                "1_recipient_interleaved": {
                    "block": 50,
                    "publish": {"p50_us": 234.0, "p99_us": 360.0},
                    "rtt": {"p50_us": 80.0},
                },
            },
        });
        let t = evaluate(&report);
        let rows = t["targets"].as_array().unwrap();
        let verdict = |name: &str| {
            rows.iter()
                .find(|r| r["target"] == name)
                .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))["verdict"]
                .clone()
        };
        assert_eq!(verdict("warm latency, 1 recipient, p50"), "missed");
        assert_eq!(
            verdict("warm latency, 1 recipient, p50, loop on the caller's runtime"),
            "met"
        );
        assert_eq!(
            verdict("throughput, 1 recipient, loop on the caller's runtime"),
            "not measured"
        );
        let view = &t["one_recipient_interleaved_on_runtime"];
        assert!((view["p50_ratio"].as_f64().unwrap() - 1.3).abs() < 1e-9);
        let md = markdown(&json!({ "targets": t }));
        assert!(
            md.contains("| warm latency, 1 recipient, p50, loop on the caller's runtime | ≤ 1.3 × (RTT + 2S + 2V) | 220.0 µs | 286.0 µs | 264.0 µs | 1.20× (limit 1.30×) | met |"),
            "{md}"
        );
        assert!(
            md.contains("1 recipient, the publisher's loop on the caller's runtime, interleaved"),
            "{md}"
        );
        // A run without the runtime's rows prints none.
        let without = evaluate(&json!({"latency_warm_publish": {}}));
        assert!(!without["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["target"].as_str().unwrap().contains("runtime")));
    }
}
