//! `daemoneye-cli`: inspect what the agent stored, check rules, verify the
//! audit ledger, ask the running agent and its collector how they are.
//!
//! Exit codes: 0 success, 1 a check failed (a refused rule, a broken
//! ledger, an agent that is not healthy or cannot be reached), 2 bad input
//! (flags, unreadable data directory).
#![allow(clippy::print_stdout)] // stdout is this binary's output

mod fleet;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use collector_core::health::state_name;
use collector_core::{CollectorIpcClient, IpcClientConfig};
use daemoneye_lib::proto::{ComponentHealth, HealthState};
use daemoneye_rules::engine;
use daemoneye_rules::rules::{self, Rule, RuleError};
use daemoneye_store::ledger::{Anchor, LedgerError, Runs};
use daemoneye_store::{Store, StoreError};

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
    /// Run one read-only SELECT over the agent's store (tables `alerts`,
    /// `processes`, `process_events`, `snapshots`, `process_snapshots`,
    /// `ledger`).
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
    /// The processes the agent knows alive.
    Processes,
    /// What a fleet of agents shipped to NATS JetStream (their `[fleet]`
    /// sinks).
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Ask the running agent (and, through it, its collector) how they are.
    Health {
        /// The agent's socket (default: `<data-dir>/agent.sock`); a
        /// collector's socket works too.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check rule files without running anything; the same verdict the
    /// agent gives at load.
    Validate {
        /// Rule files (TOML, or YAML: `*.yaml`, `*.yml`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The built-in rules and those of a directory.
    List {
        /// A rules directory to list as well.
        #[arg(long)]
        rules_dir: Option<PathBuf>,
    },
    /// The tables and columns a rule can read (`processes`, `performance`,
    /// `connections`, `file_events`, the history): the one SQL vocabulary,
    /// also the store's and the trigger conditions' names.
    Columns {
        /// Only this table's.
        #[arg(long)]
        table: Option<String>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Walk the hash chain; name the first bad entry. With anchors (heads
    /// kept off the host), also prove the chain still holds each: a cut
    /// tail, a deleted or a rebuilt ledger fail.
    Verify {
        /// A head the chain must still hold: `SEQ:HEX` (as printed here),
        /// a checkpoint's JSON line, or a file of JSON lines (the file
        /// sink's output: every checkpoint line in it is checked, alerts
        /// are skipped). Repeatable.
        #[arg(long, value_name = "HASH|FILE")]
        anchor: Vec<String>,
    },
}

/// Where the fleet's messages are (the agents' `[fleet]` url, stream and
/// `subject_prefix`).
#[derive(clap::Args)]
struct BrokerArgs {
    /// The NATS server(s): `nats://host:4222`, comma-separated for several,
    /// `nats://user:password@host` with a user and password.
    #[arg(long = "nats", env = "DAEMONEYE_NATS", value_name = "URL")]
    url: String,
    /// The JetStream stream.
    #[arg(long, default_value = daemoneye_lib::fleet::DEFAULT_STREAM)]
    stream: String,
    /// The subjects' first token.
    #[arg(long, default_value = daemoneye_lib::fleet::DEFAULT_SUBJECT_PREFIX)]
    subject_prefix: String,
}

impl BrokerArgs {
    fn broker(&self) -> fleet::Broker<'_> {
        fleet::Broker {
            url: &self.url,
            stream: &self.stream,
            prefix: &self.subject_prefix,
        }
    }
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Every host's alerts, each line naming its host, read through a
    /// durable consumer: what it acknowledged is not printed again under
    /// the same name. Without `--follow`, prints what is waiting and exits.
    Alerts {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The durable consumer's name (one per reader).
        #[arg(long, default_value = fleet::DEFAULT_CONSUMER)]
        consumer: String,
        /// Keep printing new alerts until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Check the ledger checkpoints a host shipped against that host's
    /// store, as `ledger verify --anchor` does: a cut tail, a deleted or a
    /// rebuilt ledger fail.
    Verify {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The host (its `[fleet] host`, or its hostname).
        #[arg(long)]
        host: String,
        /// The host's data directory (a copy of it will do).
        #[arg(long, value_name = "PATH")]
        store: PathBuf,
    },
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

fn columns(table: Option<&str>, format: Format) -> ExitCode {
    let tables = daemoneye_rules::engine::tables();
    if let Some(t) = table {
        if !tables.iter().any(|(name, _)| *name == t) {
            let names: Vec<&str> = tables.iter().map(|(name, _)| *name).collect();
            eprintln!(
                "daemoneye-cli: no table {t:?} (rules read {})",
                names.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let rows = tables
        .iter()
        .filter(|(name, _)| table.is_none_or(|t| t == *name))
        .flat_map(|(name, columns)| columns.iter().map(move |c| (*name, c)));
    match format {
        Format::Json => {
            let all: Vec<_> = rows
                .map(|(t, c)| serde_json::json!({"table": t, "name": c.name, "type": c.ty.as_str(), "doc": c.doc}))
                .collect();
            println!("{:#}", serde_json::Value::Array(all));
        }
        Format::Table => {
            println!("{:<17} {:<22} {:<11} MEANING", "TABLE", "COLUMN", "TYPE");
            for (t, c) in rows {
                println!("{t:<17} {:<22} {:<11} {}", c.name, c.ty.as_str(), c.doc);
            }
        }
    }
    ExitCode::SUCCESS
}

fn open_store(dir: &Path) -> Result<Store, ExitCode> {
    Store::open_read_only(dir).map_err(|e| {
        eprintln!(
            "daemoneye-cli: {:#} (is the data directory right? --data-dir)",
            anyhow::Error::from(e)
        );
        ExitCode::from(2)
    })
}

/// Runs `sql` under the store's read-only guard and time limit, each row
/// written out as it comes (SQLite's heap in this process capped as the
/// rules engine caps it).
fn query(store: &Store, sql: &str, format: Format) -> Result<ExitCode, anyhow::Error> {
    use std::io::Write as _;
    daemoneye_store::readonly::cap_heap(engine::ENGINE_HEAP_LIMIT)?;
    let stdout = std::io::stdout();
    let out = std::cell::RefCell::new(std::io::BufWriter::new(stdout.lock()));
    let names: std::cell::OnceCell<Vec<String>> = std::cell::OnceCell::new();
    let result = store.query_each(
        sql,
        |columns| {
            let _ = names.set(columns.to_vec());
            if format == Format::Table {
                writeln!(out.borrow_mut(), "{}", columns.join("\t"))?;
            }
            Ok(())
        },
        |row| {
            let mut out = out.borrow_mut();
            if format == Format::Json {
                let obj: serde_json::Map<String, serde_json::Value> = names
                    .get()
                    .into_iter()
                    .flatten()
                    .cloned()
                    .zip(row)
                    .collect();
                writeln!(out, "{}", serde_json::Value::Object(obj))
            } else {
                let cells: Vec<String> = row
                    .into_iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect();
                writeln!(out, "{}", cells.join("\t"))
            }
        },
    );
    // What was written stays written, whatever came after.
    let flushed = out.borrow_mut().flush();
    match result {
        Ok(()) => {
            flushed?;
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::Query { reason }) => {
            eprintln!("daemoneye-cli: query refused: {reason}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

/// The anchors `--anchor` names, each `SEQ:HEX`, a checkpoint's JSON line
/// or a file of JSON lines.
fn read_anchors(args: &[String]) -> Result<Vec<Anchor>, String> {
    let mut out = Vec::new();
    for arg in args {
        let looks_inline = arg.trim_start().starts_with('{')
            || arg.split_once(':').is_some_and(|(seq, _)| {
                !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit() || b == b'-')
            });
        if looks_inline {
            out.push(arg.parse::<Anchor>().map_err(|e| e.to_string())?);
            continue;
        }
        let text = std::fs::read_to_string(arg).map_err(|e| {
            format!("cannot read the anchor file {arg}: {e} (an anchor is SEQ:HEX, a checkpoint line, or a file of them)")
        })?;
        out.extend(Anchor::from_lines(&text).map_err(|e| format!("anchor file {arg}: {e}"))?);
    }
    Ok(out)
}

/// The runs the ledger records, in one line.
fn runs_line(r: &Runs) -> String {
    use std::fmt::Write as _;
    let mut line = format!("runs: {} starts, {} clean stops", r.starts, r.stops);
    if !r.unclean.is_empty() {
        let seqs: Vec<String> = r.unclean.iter().map(ToString::to_string).collect();
        let _ = write!(
            line,
            "; {} ended uncleanly (no stop before the start at seq {})",
            r.unclean.len(),
            seqs.join(", ")
        );
    }
    if r.running {
        line.push_str("; the last run has no stop (running, or ended uncleanly)");
    }
    let _ = write!(line, "; {} checkpoints", r.checkpoints);
    if let Some(seq) = r.last_checkpoint {
        let _ = write!(line, " (last at seq {seq})");
    }
    let _ = write!(line, "; {} gaps", r.gaps);
    if r.gaps > 0 {
        line.push_str(" (writes the store lost)");
    }
    line
}

/// `ledger verify`: 0 when the chain (and every anchor) holds, 1 ("ledger
/// BROKEN") only when it does not, 2 with the cause when the store or an
/// anchor cannot be read.
fn verify_ledger(data_dir: &Path, anchors: &[String], format: Format) -> ExitCode {
    match read_anchors(anchors) {
        Ok(anchors) => verify_anchored(data_dir, &anchors, format),
        Err(e) => {
            eprintln!("daemoneye-cli: {e}");
            ExitCode::from(2)
        }
    }
}

/// `fleet verify`: the checkpoints `host` shipped are the anchors of
/// [`verify_anchored`]; none shipped is a failure (1), as nothing would
/// catch a cut or rebuilt chain.
fn verify_fleet(broker: &BrokerArgs, host: &str, store: &Path, format: Format) -> ExitCode {
    let host = daemoneye_lib::fleet::subject_token(host);
    let anchors = match fleet::shipped_anchors(&broker.broker(), &host) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("daemoneye-cli: {e:#}");
            return ExitCode::from(2);
        }
    };
    if anchors.is_empty() {
        println!(
            "no checkpoints from host {host} in stream {}: nothing to verify against",
            broker.stream
        );
        return ExitCode::FAILURE;
    }
    if format == Format::Table {
        println!("{} checkpoints shipped by host {host}", anchors.len());
    }
    verify_anchored(store, &anchors, format)
}

/// The ledger of the store in `data_dir` against `anchors`; the exit codes
/// of [`verify_ledger`].
fn verify_anchored(data_dir: &Path, anchors: &[Anchor], format: Format) -> ExitCode {
    let store = match open_store(data_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let verdict = store.verify_ledger_anchored(anchors);
    // Which anchors held, when one did not.
    let held: Vec<bool> = match &verdict {
        Ok(_) => vec![true; anchors.len()],
        Err(_) => anchors
            .iter()
            .map(|a| store.check_anchor(a).is_ok())
            .collect(),
    };
    let anchors_json: Vec<serde_json::Value> = anchors
        .iter()
        .zip(&held)
        .map(|(a, held)| serde_json::json!({"seq": a.0.seq, "head": a.0.hash, "held": held}))
        .collect();
    if format == Format::Table {
        for (a, held) in anchors.iter().zip(&held) {
            println!("anchor {} {}", a.0, if *held { "held" } else { "FAILED" });
        }
    }
    match verdict {
        Ok(v) => {
            let runs = store.ledger_runs();
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "entries": v.entries,
                        "head": v.head,
                        "seq": v.seq,
                        "first": v.first,
                        "anchors": anchors_json,
                        "runs": runs.as_ref().ok(),
                    })
                );
            } else {
                println!(
                    "ledger ok: {} entries, head {}:{}",
                    v.entries, v.seq, v.head
                );
                if v.first > 1 {
                    println!(
                        "pruned: the chain starts at the checkpoint at seq {}, as its prune entry says; anchors below it are passed over",
                        v.first
                    );
                }
                if let Some(newest) = anchors.iter().map(|a| a.0.seq).max() {
                    println!(
                        "anchored: {} anchors held; nothing up to seq {newest} was cut or rewritten",
                        anchors.len()
                    );
                } else {
                    println!("not anchored: a cut tail or a rebuilt chain would verify too (--anchor FILE)");
                }
                if let Ok(r) = &runs {
                    println!("{}", runs_line(r));
                }
            }
            ExitCode::SUCCESS
        }
        Err(StoreError::Ledger(e)) if tampered(&e) => {
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": e.to_string(), "anchors": anchors_json})
                );
            } else {
                println!("ledger BROKEN: {e}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "daemoneye-cli: cannot verify the ledger: {:#}",
                anyhow::Error::from(e)
            );
            ExitCode::from(2)
        }
    }
}

/// Whether a ledger error is a verdict on the chain (an entry broken, or
/// a value of it no longer of its type: both edits) rather than a failure
/// to read the store (permissions, not a database, I/O).
fn tampered(e: &LedgerError) -> bool {
    match e {
        LedgerError::Broken { .. }
        | LedgerError::TailCut { .. }
        | LedgerError::HeadDiffers { .. } => true,
        LedgerError::Sqlite(e) => matches!(
            e,
            rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
        ),
        _ => false,
    }
}

fn processes(store: &Store, format: Format) -> Result<ExitCode, anyhow::Error> {
    let all = store.processes()?;
    match format {
        Format::Json => {
            for p in &all {
                println!("{}", serde_json::to_string(p)?);
            }
        }
        Format::Table => {
            println!(
                "{:>7} {:>7} {:>6}  {:<15} {:<10} COMMAND",
                "PID", "PPID", "UID", "NAME", "LAST"
            );
            for p in &all {
                let opt = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                let cmd = if p.argv.is_empty() {
                    p.exe.clone().unwrap_or_else(|| format!("[{}]", p.name))
                } else {
                    p.argv.join(" ")
                };
                println!(
                    "{:>7} {:>7} {:>6}  {:<15} {:<10} {cmd}",
                    p.pid,
                    opt(p.ppid),
                    opt(p.uid),
                    p.name,
                    p.last_event
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A health report as JSON (the protocol types are not serde types).
fn health_json(h: &ComponentHealth) -> serde_json::Value {
    serde_json::json!({
        "name": h.name,
        "state": state_name(h.state()),
        "message": h.message,
        "version": h.version,
        "pid": h.pid,
        "uptime_ms": h.uptime_ms,
        "counters": h.counters,
        "components": h.components.iter().map(health_json).collect::<Vec<_>>(),
    })
}

fn print_health(h: &ComponentHealth, depth: usize) {
    use std::fmt::Write as _;

    let indent = "  ".repeat(depth);
    let mut line = format!("{indent}{:<24} {}", h.name, state_name(h.state()));
    if h.pid != 0 {
        let _ = write!(line, "  pid {}", h.pid);
    }
    if h.uptime_ms != 0 {
        let _ = write!(line, "  up {}s", h.uptime_ms / 1000);
    }
    if !h.message.is_empty() {
        let _ = write!(line, "  ({})", h.message);
    }
    println!("{line}");
    // Zeros are left out of the table (`--format json` has every counter).
    let counters: Vec<String> = h
        .counters
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !counters.is_empty() {
        println!("{indent}    {}", counters.join(" "));
    }
    for c in &h.components {
        print_health(c, depth + 1);
    }
}

/// Asks the agent at `socket`: exit 0 when healthy, 1 otherwise.
fn health(socket: &Path, format: Format) -> Result<ExitCode, anyhow::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = IpcClientConfig {
        client_name: "daemoneye-cli".to_owned(),
        max_connect_attempts: 1,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ..IpcClientConfig::new(socket)
    };
    let asked = rt.block_on(async {
        let client = CollectorIpcClient::connect(config).await?;
        client.health().await
    });
    let report = match asked {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "daemoneye-cli: cannot ask {}: {e} (is the agent running? as this user?)",
                socket.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    match format {
        Format::Json => println!("{:#}", health_json(&report)),
        Format::Table => print_health(&report, 0),
    }
    Ok(if report.state() == HealthState::Healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
        Command::Rules {
            command: RulesCommand::Columns { table },
        } => Ok(columns(table.as_deref(), cli.format)),
        Command::Ledger {
            command: LedgerCommand::Verify { anchor },
        } => Ok(verify_ledger(&data_dir, anchor, cli.format)),
        Command::Fleet {
            command:
                FleetCommand::Alerts {
                    broker,
                    consumer,
                    follow,
                },
        } => fleet::alerts(&broker.broker(), consumer, *follow, cli.format),
        Command::Fleet {
            command:
                FleetCommand::Verify {
                    broker,
                    host,
                    store,
                },
        } => Ok(verify_fleet(broker, host, store, cli.format)),
        Command::Processes => match open_store(&data_dir) {
            Ok(store) => processes(&store, cli.format),
            Err(code) => return code,
        },
        Command::Health { socket } => {
            let socket = socket
                .clone()
                .unwrap_or_else(|| data_dir.join("agent.sock"));
            health(&socket, cli.format)
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
