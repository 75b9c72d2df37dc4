//! Helper processes: this test executable re-run, inside a namespace, in
//! another role (selected by `GILMSG_FAULTS_ROLE`), as `gilmsg-demo` does.
//!
//! - `publisher`: a long-lived `gilmsg::Bus` driven over stdin, one command
//!   per line, `pub <recipients,comma-separated> <timeout_ms> [count]
//!   [interval_ms] [window]` (`window`: publishes in flight at once,
//!   default 1); for each publish it prints a `start` line and then an
//!   `outcome` line (JSON) on stdout. EOF closes the bus and exits.
//! - `proxy`: the delaying TCP proxy of [`crate::proxy`].

use std::io::BufRead;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::proxy;

/// The environment variable that selects a role.
pub const ROLE_VAR: &str = "GILMSG_FAULTS_ROLE";

/// Runs the role named by `GILMSG_FAULTS_ROLE`, if set; returns its exit code.
pub fn dispatch() -> Option<i32> {
    let role = std::env::var(ROLE_VAR).ok()?;
    Some(match role.as_str() {
        "publisher" => publisher(),
        "proxy" => proxy_role(),
        other => {
            eprintln!("faults: unknown role {other:?}");
            2
        }
    })
}

fn publisher() -> i32 {
    let config_path = std::env::var("GILMSG_FAULTS_CONFIG").expect("GILMSG_FAULTS_CONFIG");
    let config =
        gilmsg::Config::from_path(std::path::Path::new(&config_path)).expect("config loads");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bus = runtime.block_on(async {
        gilmsg::Bus::builder(&config)
            .modname("faults")
            .certname("publisher")
            .active(true)
            .build()
            .expect("build publisher")
    });
    println!("{}", json!({"event": "ready"}));
    let mut seq = 0u64;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["pub", recipients, timeout_ms, rest @ ..] = words.as_slice() else {
            eprintln!("faults-publisher: bad command {line:?}");
            return 2;
        };
        let recipients: Vec<String> = recipients.split(',').map(str::to_owned).collect();
        let timeout = Duration::from_millis(timeout_ms.parse().expect("timeout_ms"));
        let count: u64 = rest.first().map_or(1, |c| c.parse().expect("count"));
        let interval =
            Duration::from_millis(rest.get(1).map_or(0, |i| i.parse().expect("interval_ms")));
        let window: usize = rest.get(2).map_or(1, |w| w.parse().expect("window"));
        runtime.block_on(async {
            let mut running = tokio::task::JoinSet::new();
            for k in 0..count {
                if k > 0 && !interval.is_zero() {
                    // The stream's pace, not a synchronisation sleep.
                    tokio::time::sleep(interval).await;
                }
                while running.len() >= window {
                    running.join_next().await;
                }
                seq += 1;
                println!("{}", json!({"event": "start", "seq": seq}));
                let (bus, recipients) = (bus.clone(), recipients.clone());
                running.spawn(publish_one(bus, seq, recipients, timeout));
            }
            while running.join_next().await.is_some() {}
        });
    }
    runtime.block_on(bus.close());
    0
}

/// One publish; prints its outcome line.
async fn publish_one(bus: gilmsg::Bus, seq: u64, recipients: Vec<String>, timeout: Duration) {
    let started = Instant::now();
    let result = bus
        .publish("fault", json!({"seq": seq}), &recipients, timeout)
        .await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut line = json!({
        "event": "outcome",
        "seq": seq,
        "recipients": recipients,
        "timeout_ms": timeout.as_millis() as u64,
        "elapsed_ms": elapsed_ms,
    });
    let fields: Value = match result {
        Ok(receipt) => json!({
            "outcome": "ok",
            "msg_id": receipt.msg_id,
            "acked": receipt.acks.iter().map(|a| a.recipient.clone()).collect::<Vec<_>>(),
            "missing": [],
            "sends": receipt.sends,
        }),
        Err(gilmsg::Error::Timeout(t)) => json!({
            "outcome": "timeout",
            "msg_id": t.msg_id,
            "acked": t.acked_names(),
            "missing": t.missing,
            "sends": t.sends,
        }),
        Err(e) => json!({"outcome": "error", "error": e.to_string()}),
    };
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    println!("{line}");
}

fn proxy_role() -> i32 {
    let routes = std::env::var("GILMSG_FAULTS_PROXY").expect("GILMSG_FAULTS_PROXY");
    let ms = |var: &str| {
        Duration::from_millis(
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    };
    let delay = proxy::Delay {
        base: ms("GILMSG_FAULTS_DELAY_MS"),
        jitter: ms("GILMSG_FAULTS_JITTER_MS"),
    };
    for route in routes.split(',') {
        let (listen, target) = route.split_once('>').expect("listen>target");
        if let Err(e) = proxy::start(listen, target, delay) {
            eprintln!("faults-proxy: cannot listen on {listen}: {e}");
            return 3;
        }
    }
    eprintln!("faults-proxy: ready routes={routes}");
    loop {
        // Runs until killed; the work is on the proxy's threads.
        std::thread::park();
    }
}
