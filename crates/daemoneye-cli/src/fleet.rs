//! `daemoneye-cli fleet`: what the agents of a fleet shipped to NATS
//! JetStream (the agent's fleet sink), read back.
//!
//! - `fleet alerts` reads every host's alerts (`<prefix>.*.alerts`) through a
//!   durable pull consumer (`--consumer`, default [`DEFAULT_CONSUMER`]): each
//!   alert printed is acknowledged, so the next run under the same name
//!   starts after it, and two readers under two names each see everything.
//!   Without `--follow` it prints what is waiting and exits.
//! - `fleet verify` reads the checkpoints one host shipped
//!   (`<prefix>.<host>.ledger`, through an ephemeral consumer that
//!   acknowledges nothing) and checks them, as `ledger verify --anchor`
//!   does, against that host's store.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use daemoneye_lib::fleet;
use daemoneye_store::ledger::Anchor;
use futures_util::StreamExt as _;

use crate::Format;

/// The durable consumer `fleet alerts` reads through when none is named.
pub(crate) const DEFAULT_CONSUMER: &str = "daemoneye-cli";
/// How long connecting, and each request to JetStream, may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Messages asked for at a time.
const BATCH: usize = 256;

/// Where the fleet's messages are: the server, the stream, the subjects'
/// first token (the agent's `[fleet] url`, `stream`, `subject_prefix`).
pub(crate) struct Broker<'a> {
    pub(crate) url: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) prefix: &'a str,
}

/// A failure to talk to the broker, with what was being done.
fn broker_error(what: &str, url: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{what} ({}): {e}", daemoneye_lib::redact_url(url))
}

fn runtime() -> Result<tokio::runtime::Runtime, anyhow::Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

impl Broker<'_> {
    async fn stream(
        &self,
    ) -> Result<(async_nats::Client, jetstream::stream::Stream), anyhow::Error> {
        let mut options = async_nats::ConnectOptions::new()
            .name("daemoneye-cli")
            .connection_timeout(TIMEOUT);
        // async-nats ignores a URL's user and password (or token).
        if let Some((user, password)) = fleet::credentials(self.url) {
            options = match password {
                Some(password) => options.user_and_password(user, password),
                None => options.token(user),
            };
        }
        let client = options
            .connect(fleet::servers(self.url))
            .await
            .map_err(|e| broker_error("cannot connect to the NATS server", self.url, e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(TIMEOUT)
            .build(client.clone());
        let stream = js.get_stream(self.stream).await.map_err(|e| {
            broker_error(&format!("no stream {} to read", self.stream), self.url, e)
        })?;
        Ok((client, stream))
    }

    /// The host a subject `<prefix>.<host>.<what>` names (the subject
    /// itself when it names none).
    fn host_of<'s>(&self, subject: &'s str) -> &'s str {
        fleet::host_of(self.prefix, subject).unwrap_or(subject)
    }
}

/// One alert as `fleet alerts` prints it.
fn alert_line(host: &str, seq: u64, msg_id: &str, body: &[u8], format: Format) -> String {
    let alert: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()));
    if format == Format::Json {
        return serde_json::json!({"host": host, "stream_seq": seq, "msg_id": msg_id, "alert": alert})
            .to_string();
    }
    // The native record's fields, or ECS's and OCSF's names for them.
    let text = |paths: &[&str]| {
        paths
            .iter()
            .find_map(|p| match alert.pointer(p) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v @ serde_json::Value::Number(_)) => Some(v.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    format!(
        "{:<16} {:<9} {:<26} {:>7}  {:<15} {}",
        host,
        text(&["/severity", "/event/severity_name", "/severity_id"]),
        text(&["/rule_id", "/rule/id", "/finding_info/uid"]),
        text(&["/process/pid"]),
        text(&["/process/name"]),
        text(&["/process/process_key", "/process/entity_id", "/process/uid"]),
    )
}

/// `fleet alerts`: every host's alerts not yet acknowledged by the durable
/// consumer `name`, each acknowledged once printed; with `follow`, then
/// every new one until interrupted.
pub(crate) fn alerts(
    broker: &Broker<'_>,
    name: &str,
    follow: bool,
    format: Format,
) -> Result<ExitCode, anyhow::Error> {
    runtime()?.block_on(async {
        let (client, stream) = broker.stream().await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_owned()),
                    description: Some("daemoneye-cli fleet alerts".to_owned()),
                    filter_subject: fleet::every_host(broker.prefix, fleet::ALERTS),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..consumer::pull::Config::default()
                },
            )
            .await
            .map_err(|e| {
                broker_error(&format!("cannot open the consumer {name}"), broker.url, e)
            })?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if format == Format::Table {
            writeln!(
                out,
                "{:<16} {:<9} {:<26} {:>7}  {:<15} PROCESS KEY",
                "HOST", "SEVERITY", "RULE", "PID", "NAME"
            )?;
        }
        let mut print = |m: &jetstream::Message| -> Result<(), anyhow::Error> {
            let seq = m.info().map_or(0, |i| i.stream_sequence);
            let msg_id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let host = broker.host_of(m.subject.as_str());
            writeln!(
                out,
                "{}",
                alert_line(host, seq, &msg_id, &m.payload, format)
            )?;
            out.flush()?;
            Ok(())
        };
        let read_error =
            |e: &dyn std::fmt::Display| broker_error("cannot read the stream", broker.url, e);
        if follow {
            let mut messages = consumer.messages().await.map_err(|e| read_error(&e))?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| read_error(&e))?;
                print(&m)?;
                m.ack().await.map_err(|e| read_error(&e))?;
            }
        } else {
            read_all(&consumer, &read_error, async |m| {
                print(&m)?;
                m.ack().await.map_err(|e| read_error(&e))
            })
            .await?;
        }
        // The acks are sent before the process goes.
        client.flush().await.map_err(|e| read_error(&e))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Every message `consumer` holds now, each handed to `each` in order: a
/// fetch answers at once with what is there, so fetches of [`BATCH`] until
/// one comes back empty.
async fn read_all(
    consumer: &consumer::PullConsumer,
    read_error: &impl Fn(&dyn std::fmt::Display) -> anyhow::Error,
    mut each: impl AsyncFnMut(jetstream::Message) -> Result<(), anyhow::Error>,
) -> Result<(), anyhow::Error> {
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(BATCH)
            .messages()
            .await
            .map_err(|e| read_error(&e))?;
        let mut got = 0usize;
        while let Some(m) = batch.next().await {
            each(m.map_err(|e| read_error(&e))?).await?;
            got += 1;
        }
        if got == 0 {
            return Ok(());
        }
    }
}

/// The checkpoints `host` shipped, as anchors, oldest first (read through
/// an ephemeral consumer that acknowledges nothing, so no reader's place
/// moves).
///
/// # Errors
/// The broker cannot be reached or read; a message on the ledger subject
/// is not a checkpoint.
pub(crate) fn shipped_anchors(
    broker: &Broker<'_>,
    host: &str,
) -> Result<Vec<Anchor>, anyhow::Error> {
    runtime()?.block_on(async {
        let (_client, stream) = broker.stream().await?;
        let subject = fleet::subject(broker.prefix, host, fleet::LEDGER);
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.clone(),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..consumer::pull::Config::default()
            })
            .await
            .map_err(|e| broker_error("cannot read the stream", broker.url, e))?;
        let mut anchors = Vec::new();
        let read_error =
            |e: &dyn std::fmt::Display| broker_error("cannot read the stream", broker.url, e);
        read_all(&consumer, &read_error, async |m| {
            let seq = m.info().map_or(0, |i| i.stream_sequence);
            let text = String::from_utf8_lossy(&m.payload);
            let anchor = text.parse::<Anchor>().map_err(|e| {
                anyhow::anyhow!("message {seq} on {subject} is not a checkpoint: {e}")
            })?;
            anchors.push(anchor);
            Ok(())
        })
        .await?;
        if let Err(e) = stream
            .delete_consumer(consumer.cached_info().name.as_str())
            .await
        {
            // It goes by itself once inactive.
            eprintln!("daemoneye-cli: could not delete the ephemeral consumer: {e}");
        }
        Ok(anchors)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_host_is_the_subjects_middle_token() {
        let b = Broker {
            url: "nats://x",
            stream: "S",
            prefix: "daemoneye",
        };
        assert_eq!(b.host_of("daemoneye.web-1.alerts"), "web-1");
        assert_eq!(b.host_of("daemoneye.db_local.ledger"), "db_local");
        assert_eq!(b.host_of("other.x.alerts"), "other.x.alerts");
    }

    #[test]
    fn a_native_alert_is_one_table_line_with_its_host() {
        let body = br#"{"rule_id":"exec-from-temp-dir","severity":"high","process":{"pid":42,"name":"x","process_key":"k"}}"#;
        let line = alert_line("a", 7, "a.alert-1", body, Format::Table);
        assert!(line.starts_with("a "), "{line}");
        for want in ["high", "exec-from-temp-dir", "42", "x", "k"] {
            assert!(line.contains(want), "{want} in {line}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&alert_line("a", 7, "a.alert-1", body, Format::Json)).unwrap();
        assert_eq!(json["host"], "a");
        assert_eq!(json["stream_seq"], 7);
        assert_eq!(json["alert"]["process"]["pid"], 42);
    }
}
