//! `gilmsg-pki`: create the bus's CA, issue and revoke identities, list them,
//! re-issue the CRL before it goes stale.
//!
//! Glue over `gilmsg_crypto::pki`; see that module for the directory layout.
//! Exit status: 0 on success, 2 on a usage error or any failure, with one
//! `gilmsg-pki: error: ...` line on stderr (its own convention: clap's
//! errors too are folded into that one line, see [`main`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use gilmsg_crypto::pki;

const DAY: Duration = Duration::from_secs(86_400);

/// Manage the certificate authority and identities of a gilmsg bus.
#[derive(Parser, Debug)]
#[command(name = "gilmsg-pki", version)]
struct Cli {
    /// PKI directory (fedmsg's ssldir).
    #[arg(long, global = true, env = "GILMSG_SSLDIR", default_value = "./pki")]
    ssldir: PathBuf,
    /// Validity of a CRL written by init, revoke or crl, in days (its
    /// nextUpdate). Verifiers refuse every certificate once it has passed:
    /// run `gilmsg-pki crl` from a timer well before.
    #[arg(long, global = true, env = "GILMSG_CRL_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    crl_days: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the directory with a new Ed25519 CA and an empty CRL.
    Init {
        /// The CA certificate's common name.
        #[arg(long, default_value = "gilmsg CA")]
        ca_name: String,
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Issue NAME.key and NAME.crt, signed by the CA.
    Issue {
        /// Identity name (letters, digits, '.', '-', '_'); becomes the CN.
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Replace an existing key and certificate of that name.
        #[arg(long)]
        force: bool,
    },
    /// Add NAME's certificate to the CRL.
    Revoke {
        /// Identity name.
        name: String,
    },
    /// Re-issue the CRL (same entries, next CRL number, a fresh nextUpdate
    /// --crl-days from now). Run it from a timer (daily) so the CRL never
    /// goes stale.
    #[command(alias = "refresh-crl")]
    Crl,
    /// List issued identities and the CRL's state.
    List,
}

fn days(n: u32) -> Duration {
    DAY * n
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = &cli.ssldir;
    let crl_options = pki::CrlOptions {
        validity: days(cli.crl_days),
    };
    match cli.command {
        Command::Init { ca_name, days: d } => {
            let r = pki::init_with_crl(
                dir,
                &pki::InitOptions {
                    ca_name,
                    validity: days(d),
                },
                &crl_options,
            )
            .map_err(|e| match e {
                gilmsg_crypto::Error::AlreadyExists { path } => anyhow::anyhow!(
                    "{}: already exists; this directory has a CA already (init never replaces one)",
                    show(&path)
                ),
                e => e.into(),
            })?;
            println!("wrote {}", show(&r.ca_key));
            println!("wrote {}", show(&r.ca_cert));
            println!(
                "wrote {} (next update {})",
                show(&r.crl),
                when(r.crl_next_update)
            );
        }
        Command::Issue {
            name,
            days: d,
            force,
        } => {
            let opts = pki::IssueOptions {
                replace: force,
                ..pki::IssueOptions::valid_for(days(d))
            };
            let r = pki::issue(dir, &name, &opts).map_err(|e| match e {
                gilmsg_crypto::Error::AlreadyExists { path } => anyhow::anyhow!(
                    "{}: already exists; `issue --force {name}` replaces it (revoke the old \
                     certificate first if its key may have leaked)",
                    show(&path)
                ),
                e => e.into(),
            })?;
            println!("wrote {}", show(&r.key));
            println!("wrote {} (serial {})", show(&r.cert), r.serial);
        }
        Command::Revoke { name } => {
            let r = pki::revoke_with(dir, &name, &crl_options)?;
            if r.newly_revoked {
                println!("revoked {name} (serial {})", r.serial);
            } else {
                println!("{name} (serial {}) was already revoked", r.serial);
            }
            println!(
                "wrote {} (CRL number {}, next update {})",
                show(&r.crl),
                r.crl_number,
                when(r.next_update)
            );
        }
        Command::Crl => {
            let r = pki::refresh_crl(dir, &crl_options)?;
            println!(
                "wrote {} (CRL number {}, {} revoked, next update {})",
                show(&r.crl),
                r.crl_number,
                r.revoked,
                when(r.next_update)
            );
        }
        Command::List => {
            let certs = pki::list(dir)?;
            if certs.is_empty() {
                println!("no identities in {}", show(dir));
            }
            let width = certs.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
            println!(
                "{:width$}  {:32}  {:20}  STATUS",
                "NAME", "SERIAL", "NOT_AFTER"
            );
            let now = SystemTime::now();
            for c in certs {
                let status = if c.revoked {
                    "revoked"
                } else if c.not_after < now {
                    "expired"
                } else if c.not_before > now {
                    "not yet valid"
                } else {
                    "valid"
                };
                println!(
                    "{:width$}  {:32}  {:20}  {status}",
                    c.name,
                    c.serial,
                    when(c.not_after),
                );
            }
            let crl = match pki::crl_status(dir) {
                Ok(crl) => crl,
                Err(gilmsg_crypto::Error::NotFound { path }) => {
                    println!(
                        "no CRL: {} not found (peers configured without crl_location do not \
                         check revocation; `gilmsg-pki revoke` recreates it)",
                        show(&path)
                    );
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let next = match crl.next_update {
                Some(t) if t < now => format!(
                    "next update {} PASSED: verifiers refuse every certificate of this CA; run `gilmsg-pki crl`",
                    when(t)
                ),
                Some(t) => format!("next update {}", when(t)),
                None => "no next update".to_owned(),
            };
            println!(
                "CRL number {}, {} revoked, {next}",
                crl.crl_number, crl.revoked
            );
        }
    }
    Ok(())
}

/// Entry point of `gilmsg-pki`: parses `argv` (program name first), runs
/// the command, prints any failure as one line; the exit status.
pub fn main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            let text = e.render().to_string();
            // clap's message is its first paragraph (it may continue on
            // indented lines, e.g. the missing arguments); usage follows.
            let message = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("gilmsg-pki: error: {message} (try --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the library's errors already name the file involved.
            eprintln!("gilmsg-pki: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
