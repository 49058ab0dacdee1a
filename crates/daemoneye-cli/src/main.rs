//! `daemoneye-cli`: inspect what the agent stored, check rules, verify the
//! audit ledger.
//!
//! Exit codes: 0 success, 1 a check failed (a refused rule, a broken
//! ledger), 2 bad input (flags, unreadable data directory).
#![allow(clippy::print_stdout)] // stdout is this binary's output

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use daemoneye_agent::engine;
use daemoneye_agent::rules::{self, Rule, RuleError};
use daemoneye_agent::store::{AgentStore, StoreError};

#[derive(Parser)]
#[command(name = "daemoneye-cli", version, about = "DaemonEye command line")]
struct Cli {
    /// The agent's data directory (default: /var/lib/daemoneye as root, the
    /// user's state directory otherwise).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Detection rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The audit ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Run one read-only SELECT over the agent's store (tables `alerts`, `ledger`).
    Query {
        /// The statement.
        sql: String,
    },
    /// Recent alerts.
    Alerts {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check rule files without running anything; the same verdict the
    /// agent gives at load.
    Validate {
        /// Rule files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The built-in rules and those of a directory.
    List {
        /// A rules directory to list as well.
        #[arg(long)]
        rules_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Walk the hash chain; name the first bad entry.
    Verify,
}

fn print_refusal(e: &RuleError) {
    println!("refused  {}  rule {}: {}", e.origin, e.rule, e.reason);
}

fn validate(files: &[PathBuf], format: Format) -> ExitCode {
    let mut accepted: Vec<Rule> = Vec::new();
    let mut refused: Vec<RuleError> = Vec::new();
    for f in files {
        let (ok, bad) = rules::load_file(f);
        refused.extend(bad);
        for rule in ok {
            match engine::validate(&rule) {
                Ok(()) => accepted.push(rule),
                Err(e) => refused.push(e),
            }
        }
    }
    if format == Format::Json {
        let v = serde_json::json!({
            "accepted": accepted.iter().map(|r| serde_json::json!({"id": r.id, "origin": r.origin})).collect::<Vec<_>>(),
            "refused": refused.iter().map(|e| serde_json::json!({"origin": e.origin, "rule": e.rule, "reason": e.reason})).collect::<Vec<_>>(),
        });
        println!("{v:#}");
    } else {
        for r in &accepted {
            println!("ok       {}  rule {}", r.origin, r.id);
        }
        for e in &refused {
            print_refusal(e);
        }
    }
    if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn list(rules_dir: Option<&PathBuf>, format: Format) -> Result<ExitCode, anyhow::Error> {
    let mut all = rules::builtin()?;
    let mut refused = Vec::new();
    if let Some(dir) = rules_dir {
        let (ok, bad) = rules::load_dir(dir);
        all.extend(ok);
        refused = bad;
    }
    match format {
        Format::Json => println!("{:#}", serde_json::to_value(&all)?),
        Format::Table => {
            println!("{:<28} {:<9} {:<12} NAME", "ID", "SEVERITY", "ORIGIN");
            for r in &all {
                println!(
                    "{:<28} {:<9} {:<12} {}",
                    r.id,
                    r.severity.to_string(),
                    r.origin,
                    r.name
                );
            }
        }
    }
    for e in &refused {
        print_refusal(e);
    }
    Ok(if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn open_store(dir: &Path) -> Result<AgentStore, ExitCode> {
    AgentStore::open_read_only(dir).map_err(|e| {
        eprintln!("daemoneye-cli: {e} (is the data directory right? --data-dir)");
        ExitCode::from(2)
    })
}

fn query(store: &AgentStore, sql: &str, format: Format) -> Result<ExitCode, anyhow::Error> {
    let r = match store.query(sql) {
        Ok(r) => r,
        Err(StoreError::Query { reason }) => {
            eprintln!("daemoneye-cli: query refused: {reason}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    if format == Format::Json {
        for row in &r.rows {
            let obj: serde_json::Map<String, serde_json::Value> =
                r.columns.iter().cloned().zip(row.iter().cloned()).collect();
            println!("{}", serde_json::Value::Object(obj));
        }
    } else {
        println!("{}", r.columns.join("\t"));
        for row in &r.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            println!("{}", cells.join("\t"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // 2 on bad flags
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(daemoneye_lib::models::default_state_dir);
    let result = match &cli.command {
        Command::Rules {
            command: RulesCommand::Validate { files },
        } => Ok(validate(files, cli.format)),
        Command::Rules {
            command: RulesCommand::List { rules_dir },
        } => list(rules_dir.as_ref(), cli.format),
        Command::Ledger {
            command: LedgerCommand::Verify,
        } => {
            let store = match open_store(&data_dir) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store.verify_ledger() {
                Ok(v) => {
                    if cli.format == Format::Json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": true, "entries": v.entries, "head": v.head})
                        );
                    } else {
                        println!("ledger ok: {} entries, head {}", v.entries, v.head);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(StoreError::Ledger(e)) => {
                    println!("ledger BROKEN: {e}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Query { sql } => match open_store(&data_dir) {
            Ok(store) => query(&store, sql, cli.format),
            Err(code) => return code,
        },
        Command::Alerts { limit } => {
            let store = match open_store(&data_dir) {
                Ok(s) => s,
                Err(code) => return code,
            };
            store
                .recent_alerts(*limit)
                .map_err(anyhow::Error::from)
                .map(|alerts| {
                    match cli.format {
                        Format::Json => {
                            for a in &alerts {
                                println!("{}", serde_json::to_string(a).unwrap_or_default());
                            }
                        }
                        Format::Table => {
                            println!(
                                "{:<9} {:<26} {:>7}  {:<15} PROCESS KEY",
                                "SEVERITY", "RULE", "PID", "NAME"
                            );
                            for a in &alerts {
                                println!(
                                    "{:<9} {:<26} {:>7}  {:<15} {}",
                                    a.severity.to_string(),
                                    a.rule_id,
                                    a.process.pid,
                                    a.process.name,
                                    a.process.process_key.as_deref().unwrap_or("-")
                                );
                            }
                        }
                    }
                    ExitCode::SUCCESS
                })
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("daemoneye-cli: {e:#}");
        ExitCode::from(2)
    })
}
