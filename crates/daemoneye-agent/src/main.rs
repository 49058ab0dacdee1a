//! `daemoneye-agent`: the main job, a thin binary over the library
//! (`daemoneye_agent::agent`): parse the flags, load the configuration,
//! build the agent, run it until SIGTERM or SIGINT, map errors to exit
//! codes.
//!
//! Exit codes: 0 after a clean stop, 2 for bad flags or input (a bad config
//! file or value, an unreadable headers file, an alerts file or data
//! directory that cannot be opened), 1 for a failure while running.
//!
//! `collect` is the built-in collector child: procmond's collector in this
//! binary, dropping every privilege but three. `collect-performance` is
//! perfmond's, dropping every privilege. `collect-network` is netmond's,
//! keeping `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`. `collect-files` is
//! fsmond's, keeping `CAP_SYS_ADMIN` and `CAP_DAC_READ_SEARCH`. `spawner`
//! is the privileged process that starts them for an agent that dropped
//! its privileges (`daemoneye_agent::spawner`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use daemoneye_agent::agent::Agent;
use daemoneye_agent::config::{RunArgs, Settings};
use daemoneye_agent::spawner::{self, Separated};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "daemoneye-agent",
    version,
    about = "DaemonEye agent: detection and alerts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect, detect and alert until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// (internal) The collector child: `procmond run`, in this binary.
    #[command(hide = true)]
    Collect(procmond::cli::RunArgs),
    /// (internal) The performance collector child: `perfmond run`, in this
    /// binary.
    #[command(hide = true)]
    CollectPerformance(perfmond::cli::RunArgs),
    /// (internal) The network collector child: `netmond run`, in this
    /// binary.
    #[command(hide = true)]
    CollectNetwork(netmond::cli::RunArgs),
    /// (internal) The file collector child: `fsmond run`, in this binary.
    #[command(hide = true)]
    CollectFiles(fsmond::cli::RunArgs),
    /// (internal) Starts the collectors for the unprivileged agent.
    #[command(hide = true)]
    Spawner(spawner::SpawnerArgs),
}

/// Prints `e` with its causes; the exit code says whose fault it is.
fn fail(e: impl Into<anyhow::Error>, bad_input: bool) -> ExitCode {
    eprintln!("daemoneye-agent: {:#}", e.into());
    if bad_input {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// A token cancelled by the first SIGTERM or SIGINT.
fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        cancel.cancel();
    });
    Ok(token)
}

async fn run(settings: Settings, separated: Option<Separated>) -> ExitCode {
    let (agent, spawner) = match separated {
        Some(separated) => match Agent::build_separated(settings, separated).await {
            Ok((agent, spawner)) => (Ok(agent), Some(spawner)),
            Err(e) => (Err(e), None),
        },
        None => (Agent::build(settings).await, None),
    };
    let agent = match agent {
        Ok(agent) => agent,
        Err(e) => {
            let bad = e.is_bad_input();
            return fail(e, bad);
        }
    };
    let shutdown = match shutdown_on_signals() {
        Ok(token) => token,
        Err(e) => {
            return fail(
                anyhow::Error::new(e).context("cannot handle signals"),
                false,
            )
        }
    };
    agent.run(shutdown).await;
    if let Some(spawner) = spawner {
        spawner::reap(spawner).await;
    }
    ExitCode::SUCCESS
}

/// perfmond's, netmond's and fsmond's children keep what they need:
/// perfmond reads world-readable files and serves a socket (no
/// capability); netmond's `sock_diag` needs none, other users'
/// `/proc/<pid>/fd` two (its eBPF program is loaded before, with
/// `CAP_BPF` and `CAP_PERFMON`: [`netmond::cli::prepare`]); fsmond's
/// filesystem marks one, naming what they report another. `Some` exit code
/// when that fails.
fn reduce_privileges(command: &Command) -> Option<ExitCode> {
    let reduced = match command {
        Command::CollectPerformance(_) => procmond::privileges::drop_all_privileges(),
        Command::CollectNetwork(_) => {
            procmond::privileges::keep_only(netmond::source::CAPABILITIES)
        }
        Command::CollectFiles(_) => procmond::privileges::keep_only(fsmond::CAPABILITIES),
        Command::Run(_) | Command::Collect(_) | Command::Spawner(_) => return None,
    };
    reduced.err().map(|e| {
        eprintln!("daemoneye-agent: {e}");
        ExitCode::FAILURE
    })
}

/// For `collect-network`: netmond's config read and its eBPF program
/// loaded and attached, before [`reduce_privileges`] leaves it two
/// capabilities. The exit code when its config is bad.
fn prepare_network(command: &Command) -> Result<Option<netmond::cli::Prepared>, ExitCode> {
    match command {
        Command::CollectNetwork(args) => netmond::cli::prepare(args)
            .map(Some)
            .map_err(|e| served(Err(e))),
        _ => Ok(None),
    }
}

/// netmond, with what [`prepare_network`] loaded.
async fn run_network(
    args: netmond::cli::RunArgs,
    prepared: Option<netmond::cli::Prepared>,
) -> Result<(), collector_core::serve::RunError> {
    match prepared {
        Some(prepared) => netmond::cli::run_prepared(args, prepared).await,
        None => netmond::cli::run(args).await,
    }
}

/// The exit code of a collector run over collector-core's `Serve`.
fn served(result: Result<(), collector_core::serve::RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(collector_core::serve::RunError::Bad(e)) => fail(e, true),
        Err(collector_core::serve::RunError::Failed(e)) => fail(e, false),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    collector_core::logging::init_logging(false);
    let mut run_with = None;
    if let Command::Run(args) = &cli.command {
        // Whatever the agent writes (store, its journal files, sockets,
        // alert files) is its owner's alone.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let mut settings = match Settings::load(args) {
            Ok(settings) => settings,
            Err(e) => return fail(e, true),
        };
        // As root: the spawner keeps the collectors' privileges, the agent
        // becomes its user. Before any thread starts.
        match spawner::separate(&mut settings, args.config.as_deref()) {
            Ok(separated) => run_with = Some((settings, separated)),
            Err(e) => {
                let bad = e.is_bad_input();
                return fail(e, bad);
            }
        }
    }
    if let Command::Spawner(args) = &cli.command {
        // Dies with the agent; keeps only what its children need.
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
            eprintln!("daemoneye-agent: cannot tie the spawner to the agent: {e}");
            return ExitCode::FAILURE;
        }
        // (The spawner drops to what its list of collectors takes before
        // anything else.)
        return match spawner::run_spawner(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(anyhow::Error::new(e).context("the spawner failed"), false),
        };
    }
    if let Command::Collect(_)
    | Command::CollectPerformance(_)
    | Command::CollectNetwork(_)
    | Command::CollectFiles(_) = &cli.command
    {
        // Die with the agent, even if it is killed outright.
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
            eprintln!("daemoneye-agent: cannot tie the collector to the agent: {e}");
        }
        if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
            eprintln!("daemoneye-agent: the agent is already gone");
            return ExitCode::FAILURE;
        }
    }
    // netmond loads its eBPF program while it may, then keeps its two.
    let net_prepared = match prepare_network(&cli.command) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    if let Some(code) = reduce_privileges(&cli.command) {
        return code;
    }
    // The collector loads the eBPF tier while it may, then drops to the three.
    let prepared = match &cli.command {
        Command::Collect(args) => match procmond::cli::prepare(args) {
            Ok(prepared) => Some(prepared),
            Err(procmond::cli::RunError::Bad(e)) => return fail(e, true),
            Err(procmond::cli::RunError::Failed(e)) => return fail(e, false),
        },
        Command::Run(_)
        | Command::CollectPerformance(_)
        | Command::CollectNetwork(_)
        | Command::CollectFiles(_)
        | Command::Spawner(_) => None,
    };
    if prepared.is_some() {
        if let Err(e) = procmond::privileges::drop_privileges() {
            eprintln!("daemoneye-agent: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match procmond::cli::runtime_in_main("daemoneye-agent") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match cli.command {
        Command::Run(_) => match run_with {
            Some((settings, separated)) => rt.block_on(run(settings, separated)),
            None => ExitCode::FAILURE,
        },
        Command::Spawner(_) => ExitCode::FAILURE,
        Command::Collect(args) => match rt.block_on(async {
            match prepared {
                Some(prepared) => procmond::cli::run_prepared(args, prepared).await,
                None => procmond::cli::run(args).await,
            }
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(procmond::cli::RunError::Bad(e)) => fail(e, true),
            Err(procmond::cli::RunError::Failed(e)) => fail(e, false),
        },
        Command::CollectPerformance(args) => match rt.block_on(perfmond::cli::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(perfmond::cli::RunError::Bad(e)) => fail(e, true),
            Err(perfmond::cli::RunError::Failed(e)) => fail(e, false),
        },
        Command::CollectNetwork(args) => served(rt.block_on(run_network(args, net_prepared))),
        Command::CollectFiles(args) => served(rt.block_on(fsmond::cli::run(args))),
    }
}
