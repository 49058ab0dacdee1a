//! The agent binary's answers to bad input: a message and exit code 2,
//! before anything is started; and where each setting is taken from (flag,
//! environment, config file), seen through those answers.

use std::path::Path;
use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_daemoneye-agent");

/// The variables the agent reads, none inherited from the test's
/// environment.
const VARIABLES: &[&str] = &[
    "DAEMONEYE_CONFIG",
    "DAEMONEYE_DATA_DIR",
    "DAEMONEYE_RULES_DIR",
    "DAEMONEYE_ALERTS_JSONL",
    "DAEMONEYE_SYSLOG",
    "DAEMONEYE_WEBHOOK",
    "DAEMONEYE_WEBHOOK_HEADERS_FILE",
    "DAEMONEYE_PROCMOND",
    "DAEMONEYE_COLLECTOR_SOCKET",
    "DAEMONEYE_INTERVAL",
    "DAEMONEYE_SWEEP_INTERVAL",
    "DAEMONEYE_DEDUP_WINDOW",
    "DAEMONEYE_CHECKPOINT_INTERVAL",
    "DAEMONEYE_METRICS_LISTEN",
];

/// `daemoneye-agent run` with `args` and the environment `env` only.
fn agent(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(AGENT);
    cmd.arg("run").args(args);
    for v in VARIABLES {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn run(data: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    agent(&args, &[])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Checks that `out` is a refusal, exit code 2 with `named` in its
/// message, and returns the message.
fn refused(out: &std::process::Output, named: &str) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(out);
    assert!(err.contains(named), "{named:?} not in: {err}");
    err
}

#[test]
fn bad_input_is_named_and_exits_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // A flag clap refuses.
    refused(
        &run(&data, &["--webhook", "ftp://example.org/x"]),
        "ftp://example.org/x",
    );

    // A headers file others can read.
    let headers = dir.path().join("headers");
    crate::write_with_mode(&headers, "Authorization: Bearer x\n", 0o644);
    let out = run(
        &data,
        &[
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--webhook-headers-file",
            headers.to_str().unwrap(),
        ],
    );
    let err = refused(&out, "chmod 600");
    assert!(!err.contains("Bearer"), "{err}");

    // An alerts file that cannot be opened.
    refused(
        &run(&data, &["--alerts-jsonl", "/nonexistent/dir/alerts.jsonl"]),
        "/nonexistent/dir/alerts.jsonl",
    );
}

#[test]
fn a_store_that_cannot_be_opened_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Not a database (exited 1 before: an internal failure, to systemd).
    std::fs::write(data.join("agent.db"), "not a database\n").unwrap();
    let err = refused(&run(&data, &[]), "agent.db");
    assert!(err.contains("not a database"), "{err}");
}

#[test]
fn a_bad_config_file_is_named_with_the_key_and_exits_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("agent.toml");

    for (toml, named) in [
        // An unknown key: the file, the key and its line.
        (
            "sweep_interval = \"60s\"\n\n[sinks]\nwebhok = \"http://x\"\n",
            &["webhok", "line 4"][..],
        ),
        // A value that parses but cannot be used: the file and the key.
        (
            "[[collector]]\nname = \"procmond\"\n",
            &["collector[0].socket"][..],
        ),
    ] {
        std::fs::write(&config, toml).unwrap();
        let out = run(&data, &["--config", config.to_str().unwrap()]);
        let err = refused(&out, config.to_str().unwrap());
        assert!(named.iter().all(|n| err.contains(n)), "{named:?}: {err}");
    }

    // A file that is not there, named by the variable.
    let missing = dir.path().join("missing.toml");
    refused(
        &agent(
            &["--data-dir", data.to_str().unwrap()],
            &[("DAEMONEYE_CONFIG", missing.to_str().unwrap())],
        ),
        missing.to_str().unwrap(),
    );
    assert!(
        !data.exists(),
        "nothing is created before the config is good"
    );
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("agent.toml");
    // Each level names an alerts file in a directory that does not exist:
    // the one refused is the one used.
    std::fs::write(
        &config,
        "[sinks]\nalerts_jsonl = \"/nonexistent/file/a.jsonl\"\n",
    )
    .unwrap();
    let base = [
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let env = [("DAEMONEYE_ALERTS_JSONL", "/nonexistent/env/a.jsonl")];

    refused(&agent(&base, &[]), "/nonexistent/file/a.jsonl");

    refused(&agent(&base, &env), "/nonexistent/env/a.jsonl");

    let mut flagged = base.to_vec();
    flagged.extend(["--alerts-jsonl", "/nonexistent/flag/a.jsonl"]);
    refused(&agent(&flagged, &env), "/nonexistent/flag/a.jsonl");

    // The data directory from the variable, when no flag gives one.
    refused(
        &agent(
            &["--config", config.to_str().unwrap()],
            &[("DAEMONEYE_DATA_DIR", "/proc/self/nonexistent/data")],
        ),
        "/proc/self/nonexistent/data",
    );

    // A bad duration in a variable is refused like the flag.
    refused(
        &agent(
            &["--data-dir", data.to_str().unwrap()],
            &[("DAEMONEYE_SWEEP_INTERVAL", "soon")],
        ),
        "soon",
    );
}

#[test]
fn a_metrics_address_in_use_or_unparsable_exits_with_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let in_use = format!("cannot listen for metrics on {addr}");

    refused(&run(&data, &["--metrics-listen", &addr]), &in_use);

    // The variable, when no flag is given; the flag over it.
    let env = [("DAEMONEYE_METRICS_LISTEN", addr.as_str())];
    refused(
        &agent(&["--data-dir", data.to_str().unwrap()], &env),
        &in_use,
    );
    refused(
        &agent(
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--metrics-listen",
                "localhost",
            ],
            &env,
        ),
        "--metrics-listen",
    );
}
