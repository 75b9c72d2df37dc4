//! `gilmsg-tail`: a validating, non-ACKing tail of the bus, for people.
//!
//! Unlike `gilmsg-consumer --no-ack`, which shows only what passes
//! validation, the tail shows every message it receives with its verdict:
//! `valid` (and the verified signer), `unsigned`, or `invalid` with the
//! reason (`bad_signature`, `untrusted_certificate`, `revoked_certificate`,
//! ...) and the name the certificate *claims*, marked as unverified. It
//! never sends an ACK, so it can watch a production bus without changing
//! what any publisher sees.
//!
//! How: its subscription takes every message it can decode (signature
//! checks off in its own copy of the configuration), then each one is
//! verified here by the same [`Validator`] and trust store the consumer
//! uses. Decoding, size, age and duplicate rules still apply (a copy of a
//! `msg_id` already shown is not shown again).
//!
//! Text from the bus is never written raw to a terminal: control
//! characters are escaped.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anstyle::{AnsiColor, Style};
use clap::Parser;
use gilmsg::crypto::TrustStore;
use gilmsg::proto::policy::RoutingPolicy;
use gilmsg::proto::{Envelope, Rejection, Validator, VerifyError};
use serde_json::json;

use crate::common::{self, CommonArgs, Failure};
use crate::signals::{SignalEvent, Signals};

/// The start of the line the tail prints on stderr once it is subscribed.
pub const READY_LINE: &str = "gilmsg-tail: ready";

const AFTER_HELP: &str = "\
Topic filters (--topic, repeatable, matched against the whole topic):
  org.example.prod.billing.        a prefix (no * ? or [ in it)
  org.example.prod.*.invoice.*     a glob: * and ? match any characters, [abc] a set
Without --topic: everything under <topic_prefix>.<environment>.

Verdicts: valid (signer = the verified certificate name), unsigned, or
invalid(<reason>) with claimed=<name> (the certificate's name, NOT verified).

Colour: --color auto (the default) colours only when stdout is a terminal and NO_COLOR
is unset.

Exit status: 0 after a stop (SIGINT/SIGTERM) or --count; 2 usage or configuration error;
3 bus error.";

/// How each message is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per message.
    Line,
    /// A header line, then the verdict and the indented payload.
    Pretty,
}

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Only when stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-tail",
    version,
    about = "Show the messages on a gilmsg/fedmsg bus with each one's signature verdict; never ACKs.",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Topic filter: a prefix, or a glob with * ? [..] (repeatable).
    #[arg(long = "topic", value_name = "PATTERN")]
    pub topics: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Line)]
    pub format: Format,
    /// One JSON object per line instead (topic, msg_id, timestamp, verdict, reason, signer, claimed_signer, msg).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Colour the verdicts.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Also show ACK messages.
    #[arg(long)]
    pub include_acks: bool,
    /// Also show heartbeats (gilmsg.heartbeat).
    #[arg(long)]
    pub include_heartbeats: bool,
    /// Exit after showing this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Config file, fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// One topic filter (also the firehose's allow and deny lists).
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    Prefix(String),
    Glob(glob::Pattern),
}

impl Filter {
    pub(crate) fn parse(text: &str) -> Result<Filter, Failure> {
        if text.contains(['*', '?', '[']) {
            glob::Pattern::new(text)
                .map(Filter::Glob)
                .map_err(|e| Failure::usage(format!("error: --topic {text:?}: {e}")))
        } else {
            Ok(Filter::Prefix(text.to_owned()))
        }
    }

    /// What to subscribe to: the literal text before the first wildcard.
    pub(crate) fn subscription(&self) -> String {
        match self {
            Filter::Prefix(p) => p.clone(),
            Filter::Glob(g) => {
                let text = g.as_str();
                let end = text.find(['*', '?', '[']).unwrap_or(text.len());
                text[..end].to_owned()
            }
        }
    }

    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            Filter::Prefix(p) => topic.starts_with(p.as_str()),
            Filter::Glob(g) => g.matches(topic),
        }
    }
}

/// A message's signature verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed, and the signature and certificate check out.
    Valid {
        /// The verified certificate name.
        signer: String,
    },
    /// No signature at all.
    Unsigned,
    /// Signed, and refused.
    Invalid {
        /// Why (`bad_signature`, `untrusted_certificate`, ...).
        reason: &'static str,
        /// The name the certificate claims, not verified.
        claimed: Option<String>,
    },
}

impl Verdict {
    /// Judges `message` with `validator`.
    pub fn of(message: &Envelope, validator: &Validator) -> Verdict {
        match validator.validate(message) {
            Ok(validated) => match validated.signer {
                Some(signer) => Verdict::Valid { signer },
                None => Verdict::Unsigned,
            },
            Err(Rejection::Unsigned) => Verdict::Unsigned,
            Err(rejection) => {
                let claimed = match &rejection {
                    Rejection::Signature(
                        VerifyError::BadSignature(who)
                        | VerifyError::Expired(who)
                        | VerifyError::NotYetValid(who)
                        | VerifyError::Revoked(who)
                        | VerifyError::Untrusted(who),
                    ) => Some(who.clone()),
                    _ => None,
                };
                Verdict::Invalid {
                    reason: rejection.kind(),
                    claimed,
                }
            }
        }
    }

    fn word(&self) -> String {
        match self {
            Verdict::Valid { .. } => "valid".into(),
            Verdict::Unsigned => "unsigned".into(),
            Verdict::Invalid { reason, .. } => format!("invalid({reason})"),
        }
    }

    fn style(&self) -> Style {
        let colour = match self {
            Verdict::Valid { .. } => AnsiColor::Green,
            Verdict::Unsigned => AnsiColor::Yellow,
            Verdict::Invalid { .. } => AnsiColor::Red,
        };
        Style::new().fg_color(Some(colour.into())).bold()
    }

    fn who(&self) -> String {
        match self {
            Verdict::Valid { signer } => format!("signer={signer}"),
            Verdict::Unsigned => "signer=-".into(),
            Verdict::Invalid {
                claimed: Some(name),
                ..
            } => format!("claimed={name} (unverified)"),
            Verdict::Invalid { claimed: None, .. } => "signer=-".into(),
        }
    }
}

/// Escapes control characters (terminal escapes included) in text from the bus.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() && c != '\n' {
                Box::new(c.escape_unicode())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

/// The text shown for one message.
fn render(
    message: &Envelope,
    verdict: &Verdict,
    format: Format,
    json_lines: bool,
    colour: bool,
) -> String {
    let when = message
        .timestamp()
        .and_then(|t| u64::try_from(t).ok())
        .map(|t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into());
    if json_lines {
        let (reason, signer, claimed) = match verdict {
            Verdict::Valid { signer } => (None, Some(signer.as_str()), None),
            Verdict::Unsigned => (None, None, None),
            Verdict::Invalid { reason, claimed } => (Some(*reason), None, claimed.as_deref()),
        };
        let verdict_word = match verdict {
            Verdict::Valid { .. } => "valid",
            Verdict::Unsigned => "unsigned",
            Verdict::Invalid { .. } => "invalid",
        };
        // serde_json escapes control characters below U+0020; the rest
        // of the C0/C1 range is escaped by `printable`.
        return printable(
            &json!({
                "topic": message.topic(),
                "msg_id": message.msg_id(),
                "timestamp": message.timestamp(),
                "verdict": verdict_word,
                "reason": reason,
                "signer": signer,
                "claimed_signer": claimed,
                "msg": message.msg(),
            })
            .to_string(),
        );
    }
    // Bus text is escaped field by field, before our own colour codes go
    // around the verdict.
    let style = if colour {
        verdict.style()
    } else {
        Style::new()
    };
    let word = format!("{style}{}{style:#}", verdict.word());
    let (topic, msg_id, who) = (
        printable(message.topic()),
        printable(message.msg_id()),
        printable(&verdict.who()),
    );
    match format {
        Format::Line => format!(
            "{when} {topic} {word} {who} msg_id={msg_id} {}",
            printable(&message.msg().to_string())
        ),
        Format::Pretty => {
            let body = serde_json::to_string_pretty(message.msg()).unwrap_or_default();
            let indented: Vec<String> = body
                .lines()
                .map(|l| format!("    {}", printable(l)))
                .collect();
            format!(
                "{when} {topic}\n  signature: {word} {who}\n  msg_id: {msg_id}\n  msg:\n{}\n",
                indented.join("\n")
            )
        }
    }
}

/// Runs the tail until a signal or `--count`.
pub fn run(args: Args) -> Result<(), Failure> {
    let runtime = common::runtime()?;
    runtime.block_on(async move {
        let mut signals = Signals::install()?;
        let mut config = args.common.load()?;
        config.validate()?;
        if args.common.printed_config(&config) {
            return Ok(());
        }
        let filters = args
            .topics
            .iter()
            .map(|t| Filter::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let trust = TrustStore::load(&config.ca_cert_path(), config.crl_path().as_deref())
            .map_err(|e| Failure::usage(format!("error: cannot load the trust store: {e}")))?;
        let rules: HashMap<String, Vec<String>> = config
            .routing_policy
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let validator = Validator::new(
            Arc::new(trust),
            RoutingPolicy::new(rules, config.routing_nitpicky),
        );
        // Every decodable message reaches us; the verdict is ours to give.
        config.validate_signatures = false;
        let mut builder = gilmsg::Consumer::builder(&config)
            .send_acks(false)
            // On AMQP: a queue of its own (exclusive, auto-delete, bound
            // to the filters alone), never another consumer's.
            .private_queue(true)
            .deliver_acks(args.include_acks)
            .deliver_heartbeats(args.include_heartbeats);
        if !filters.is_empty() {
            builder = builder.topics(filters.iter().map(Filter::subscription));
        }
        let mut consumer = builder.build()?;
        let colour = match args.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        tokio::select! {
            _ = consumer.ready() => {}
            event = signals.next() => if event == SignalEvent::Exit {
                consumer.close().await;
                return Ok(());
            },
        }
        eprintln!("{READY_LINE}");
        let mut shown = 0u64;
        loop {
            if args.count.is_some_and(|n| shown >= n) {
                break;
            }
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(delivery) = delivery else { break };
                    let message = delivery.message();
                    if !filters.is_empty() && !filters.iter().any(|f| f.matches(message.topic())) {
                        let _ = delivery.ack();
                        continue;
                    }
                    let verdict = Verdict::of(message, &validator);
                    let line = render(message, &verdict, args.format, args.json, colour);
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{line}")
                        .and_then(|()| stdout.flush())
                        .map_err(|e| Failure {
                            status: common::EXIT_BUS,
                            message: format!("error: cannot write to stdout: {e}"),
                        })?;
                    // Settled as handled; with ACKs off nothing is sent.
                    let _ = delivery.ack();
                    shown += 1;
                }
                event = signals.next() => match event {
                    SignalEvent::Stats => eprintln!("{}", common::stats_line("gilmsg-tail", &consumer.stats())),
                    SignalEvent::Exit => break,
                },
            }
        }
        consumer.close().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_prefixes_or_globs_and_subscribe_to_their_literal_start() {
        let prefix = Filter::parse("org.x.prod.billing.").unwrap();
        assert!(prefix.matches("org.x.prod.billing.invoice"));
        assert!(!prefix.matches("org.x.prod.shipping"));
        assert_eq!(prefix.subscription(), "org.x.prod.billing.");
        let glob = Filter::parse("org.x.prod.*.invoice.*").unwrap();
        assert!(glob.matches("org.x.prod.billing.invoice.paid"));
        assert!(!glob.matches("org.x.prod.billing.refund.paid"));
        assert_eq!(glob.subscription(), "org.x.prod.");
        assert!(Filter::parse("org.[x").is_err());
    }

    fn unsigned(topic: &str, msg: serde_json::Value) -> Envelope {
        gilmsg::proto::Draft {
            topic: topic.to_owned(),
            msg,
            msg_id: "2026-0000".into(),
            i: 1,
            timestamp: 1_764_504_000,
            username: "test".into(),
            wants_ack: false,
        }
        .build(None)
        .expect("a message")
    }

    #[test]
    fn pretty_indents_the_payload_and_colour_is_only_on_request() {
        let message = unsigned("org.x.prod.a.b", json!({"k": [1, 2]}));
        let invalid = Verdict::Invalid {
            reason: "bad_signature",
            claimed: Some("mallory".into()),
        };
        let plain = render(&message, &invalid, Format::Pretty, false, false);
        assert_eq!(
            plain,
            "2025-11-30T12:00:00Z org.x.prod.a.b\n  signature: invalid(bad_signature) claimed=mallory (unverified)\n  msg_id: 2026-0000\n  msg:\n    {\n      \"k\": [\n        1,\n        2\n      ]\n    }\n"
        );
        let coloured = render(&message, &invalid, Format::Line, false, true);
        assert!(
            coloured.contains("\u{1b}[1m\u{1b}[31minvalid(bad_signature)\u{1b}[0m"),
            "{coloured:?}"
        );
        let line = render(&message, &Verdict::Unsigned, Format::Line, false, false);
        assert_eq!(
            line,
            "2025-11-30T12:00:00Z org.x.prod.a.b unsigned signer=- msg_id=2026-0000 {\"k\":[1,2]}"
        );
    }

    #[test]
    fn text_from_the_bus_cannot_drive_the_terminal() {
        assert_eq!(printable("a\u{1b}[31mb\u{9b}c"), "a\\u{1b}[31mb\\u{9b}c");
    }
}
