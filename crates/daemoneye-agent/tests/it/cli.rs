//! The agent binary's answers to bad input: a message and exit code 2,
//! before anything is started.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_daemoneye-agent");

fn run(data: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(AGENT)
        .args(["run", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn bad_input_is_named_and_exits_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // A flag clap refuses.
    let out = run(&data, &["--webhook", "ftp://example.org/x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ftp://example.org/x"));

    // A headers file others can read.
    let headers = dir.path().join("headers");
    std::fs::write(&headers, "Authorization: Bearer x\n").unwrap();
    std::fs::set_permissions(
        &headers,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = run(
        &data,
        &[
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--webhook-headers-file",
            headers.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chmod 600") && !err.contains("Bearer"),
        "{err}"
    );

    // An alerts file that cannot be opened.
    let out = run(&data, &["--alerts-jsonl", "/nonexistent/dir/alerts.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir/alerts.jsonl"));
}
