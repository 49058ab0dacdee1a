//! `/metrics` of the agent as a library: bound in `build` (an address in
//! use is bad input, naming it), served while it runs, the same counters
//! health reads under their Prometheus names.

use std::net::SocketAddr;
use std::time::Duration;

use daemoneye_agent::agent::Agent;
use daemoneye_agent::link::LinkState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::agent::{alerts_pipe, settings, test_settings};
use crate::link::{exec, Served};

/// `GET /metrics` over a real connection: the status line and the body.
async fn scrape(addr: SocketAddr) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the series `series` (name and sorted labels, as encoded).
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn metrics_listen_serves_the_agent_counters() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("alpha.sock");
    let alpha = Served::start(&socket).await;
    let fifo = dir.path().join("alerts.fifo");
    let alerts = alerts_pipe(&fifo);
    let rest = format!(
        r#"
        metrics_listen = "127.0.0.2:0"
        [[collector]]
        name = "alpha"
        socket = "{socket}"
        "#,
        socket = socket.display(),
    );
    let agent = Agent::build(test_settings(dir.path(), &fifo, &rest))
        .await
        .unwrap();
    let addr = agent.metrics_addr().expect("metrics_listen is set");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let registry = agent.metrics();
    let health = agent.health();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    let link = &health.collectors[0].link;
    tokio::time::timeout(
        Duration::from_secs(10),
        link.wait_for(|s| s.state() == LinkState::Connected),
    )
    .await
    .unwrap_or_else(|_| panic!("never connected: {}", link.last_error()));
    let mut e = exec(4001, "from-shm");
    e.executable_path = Some("/dev/shm/from-shm".to_owned());
    alpha.send(e).await;
    let alert = tokio::task::spawn_blocking(move || alerts.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("an alert for the event");
    assert_eq!(alert["rule_id"], "exec-from-temp-dir", "{alert}");

    // The file sink counts its delivery just after writing the line read
    // above, and the store writes the alert after the sinks have it: scrape
    // until both have (nothing to await across HTTP).
    let delivered = "daemoneye_alerts_delivered_total{sink=\"file\"}";
    let stored = "daemoneye_alerts_written_total{stage=\"store\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, text) = scrape(addr).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
        if sample(&text, delivered).unwrap_or(0) >= 1 && sample(&text, stored).unwrap_or(0) >= 1 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never delivered:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(
            &text,
            "daemoneye_events_dropped_total{reason=\"full\",stage=\"store\"}"
        ),
        Some(0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE daemoneye_alerts_raised_total counter\n"),
        "{text}"
    );
    assert!(
        sample(&text, "daemoneye_alerts_raised_total").unwrap() >= 1,
        "{text}"
    );
    assert_eq!(
        sample(&text, "daemoneye_alerts_suppressed_total"),
        Some(0),
        "{text}"
    );
    let received = "daemoneye_events_received_total{collector=\"alpha\",stage=\"link\"}";
    assert!(sample(&text, received).unwrap() > 0, "{text}");
    assert_eq!(
        sample(
            &text,
            "daemoneye_collector_restarts_total{collector=\"alpha\"}"
        ),
        Some(0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "daemoneye_collector_state{collector=\"alpha\"}"),
        Some(1),
        "{text}"
    );
    assert!(
        sample(&text, "daemoneye_alerts_delivered_total{sink=\"stdout\"}").is_some(),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "daemoneye_alerts_dropped_total{reason=\"full\",sink=\"file\"}"
        ),
        Some(0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "daemoneye_sink_failing{sink=\"file\"}"),
        Some(0)
    );
    assert!(
        sample(&text, "daemoneye_rules_loaded").unwrap() > 0,
        "{text}"
    );
    // The engine's counters: the alert above came from a rule run that matched.
    assert!(
        sample(&text, "daemoneye_rule_matches_total").unwrap() >= 1,
        "{text}"
    );
    assert!(
        sample(&text, "daemoneye_rule_runs_total").unwrap()
            >= sample(&text, "daemoneye_rule_batches_total").unwrap(),
        "{text}"
    );
    assert_eq!(sample(&text, "daemoneye_rule_failures_total"), Some(0));
    // The detector's directory cache is exported too.
    for series in [
        "daemoneye_dir_lookups_total{stage=\"detector\"}",
        "daemoneye_dir_lookups_unknown_total{stage=\"detector\"}",
    ] {
        assert!(sample(&text, series).is_some(), "no {series} in {text}");
    }
    // Health reads the same counters.
    let report = health.report().await;
    assert_eq!(
        report.counters["collector.alpha.events_received"],
        registry
            .value(
                "daemoneye_events_received_total",
                &[("stage", "link"), ("collector", "alpha")]
            )
            .unwrap()
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the agent stops when told")
        .unwrap();
    // Served until the agent stopped, not after. (On 127.0.0.2: the other
    // tests' listeners on 127.0.0.1 cannot take over the freed port.)
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    alpha.stop().await;
}

#[tokio::test]
async fn a_metrics_address_in_use_is_bad_input_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let e = Agent::build(settings(&format!(
        "data_dir = \"{}\"\nmetrics_listen = \"{addr}\"\n",
        dir.path().join("data").display()
    )))
    .await
    .unwrap_err();
    assert!(e.is_bad_input(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("cannot listen for metrics on {addr}")
    );
}
