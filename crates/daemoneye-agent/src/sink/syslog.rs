//! The syslog alert sink (RFC 5424).

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use super::{AlertFormat, AlertSink, Checkpoint, Delivery, Host};
use crate::alert::Alert;
use crate::rules::Severity;

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// A local datagram socket, usually `/dev/log`.
    Unix(PathBuf),
    /// A UDP collector (`udp://host:port`).
    Udp(SocketAddr),
}

impl std::str::FromStr for SyslogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("udp://") {
            Some(addr) => addr
                .parse()
                .map(Self::Udp)
                .map_err(|e| format!("{s:?}: expected udp://IP:PORT ({e})")),
            None if s.starts_with('/') => Ok(Self::Unix(PathBuf::from(s))),
            None => Err(format!("{s:?}: expected a socket path or udp://IP:PORT")),
        }
    }
}

enum Socket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

/// Sends each alert as one RFC 5424 message (facility `authpriv`), never
/// waiting: a send that cannot complete at once fails (counted `failed` by
/// its worker, not retried).
pub struct SyslogSink {
    socket: Socket,
    target: SyslogTarget,
    /// The host, named in every message's header.
    host: Host,
    /// The message body's format.
    format: AlertFormat,
}

collector_core::debug_fields!(SyslogSink { target, format });

/// RFC 5424 severity for an alert severity.
const fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// `authpriv` (security messages).
const FACILITY: u8 = 10;

/// Escapes a structured-data parameter value (RFC 5424 §6.3.3).
fn sd_escape(v: &str) -> String {
    v.chars()
        .flat_map(|c| match c {
            '"' | '\\' | ']' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// Formats one alert as an RFC 5424 message, the native JSON record as
/// its message.
pub fn format_rfc5424(alert: &Alert, hostname: &str, pid: u32) -> String {
    let body = serde_json::to_string(alert).unwrap_or_default();
    rfc5424(alert, hostname, pid, &body)
}

/// One alert as an RFC 5424 message with `body` as its message.
fn rfc5424(alert: &Alert, hostname: &str, pid: u32, body: &str) -> String {
    let pri = FACILITY * 8 + syslog_severity(alert.severity);
    let nanos = u64::try_from(alert.raised_at).unwrap_or(0);
    let ts = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(nanos));
    let key = alert.process.process_key.as_deref().unwrap_or("-");
    format!(
        "<{pri}>1 {ts} {hostname} daemoneye-agent {pid} {msgid} [alert@32473 rule=\"{rule}\" severity=\"{sev}\" pid=\"{ppid}\" process_key=\"{key}\"] {body}",
        msgid = alert.rule_id.chars().take(32).collect::<String>(),
        rule = sd_escape(&alert.rule_id),
        sev = alert.severity,
        ppid = alert.process.pid,
        key = sd_escape(key),
    )
}

/// Formats one checkpoint as an RFC 5424 message: `notice` (`warning`
/// when something was lost since the previous one), message id
/// `checkpoint`, the head in structured data, the JSON line as the message.
pub fn format_checkpoint_rfc5424(checkpoint: &Checkpoint, hostname: &str, pid: u32) -> String {
    let severity = if checkpoint.lost.is_none() { 5 } else { 4 };
    let pri = FACILITY * 8 + severity;
    let nanos = u64::try_from(checkpoint.time).unwrap_or(0);
    let ts = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(nanos));
    let body = serde_json::to_string(checkpoint).unwrap_or_default();
    let lost = checkpoint.lost;
    format!(
        "<{pri}>1 {ts} {hostname} daemoneye-agent {pid} checkpoint [checkpoint@32473 seq=\"{seq}\" head=\"{head}\" lost_writes=\"{w}\" lost_events=\"{e}\" gaps=\"{g}\"] {body}",
        seq = checkpoint.seq,
        head = sd_escape(&checkpoint.head),
        w = lost.writes,
        e = lost.events,
        g = lost.gaps,
    )
}

impl SyslogSink {
    /// Opens a non-blocking socket towards `target`.
    ///
    /// # Errors
    /// When the socket cannot be created or connected.
    pub fn open(target: SyslogTarget) -> std::io::Result<Self> {
        let socket = match &target {
            SyslogTarget::Unix(path) => {
                let s = UnixDatagram::unbound()?;
                s.connect(path)?;
                s.set_nonblocking(true)?;
                Socket::Unix(s)
            }
            SyslogTarget::Udp(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let s = UdpSocket::bind(bind)?;
                s.connect(addr)?;
                s.set_nonblocking(true)?;
                Socket::Udp(s)
            }
        };
        Ok(Self {
            socket,
            target,
            host: Host::local(),
            format: AlertFormat::Native,
        })
    }

    /// The same sink with message bodies in `format` (checkpoints stay
    /// native).
    #[must_use]
    pub fn with_format(mut self, format: AlertFormat) -> Self {
        self.format = format;
        self
    }

    /// Sends one alert, never waiting.
    ///
    /// # Errors
    /// The send error.
    pub fn send(&self, alert: &Alert) -> std::io::Result<()> {
        let body = self
            .format
            .encode(alert, &self.host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.send_message(&rfc5424(
            alert,
            &self.host.hostname,
            std::process::id(),
            &body,
        ))
    }

    fn send_message(&self, msg: &str) -> std::io::Result<()> {
        match &self.socket {
            Socket::Unix(s) => s.send(msg.as_bytes()),
            Socket::Udp(s) => s.send(msg.as_bytes()),
        }
        .map(|_| ())
    }
}

impl AlertSink for SyslogSink {
    fn name(&self) -> &'static str {
        "syslog"
    }

    async fn deliver(&mut self, alert: &Alert) -> Delivery {
        match self.send(alert) {
            Ok(()) => Delivery::Delivered,
            Err(e) => Delivery::Failed(format!("cannot send to {:?}: {e}", self.target)),
        }
    }

    async fn deliver_checkpoint(&mut self, checkpoint: &Checkpoint) -> Delivery {
        let msg = format_checkpoint_rfc5424(checkpoint, &self.host.hostname, std::process::id());
        match self.send_message(&msg) {
            Ok(()) => Delivery::Delivered,
            Err(e) => Delivery::Failed(format!("cannot send to {:?}: {e}", self.target)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::SystemTime;

    use collector_core::ProcessEvent;

    use super::*;
    use crate::alert::AlertProcess;
    use crate::rules;
    use crate::sink::{SinkWorker, WorkerConfig};

    fn alert() -> Alert {
        let rule = rules::builtin()
            .unwrap()
            .into_iter()
            .find(|r| r.id == "reverse-shell")
            .unwrap();
        let mut e = ProcessEvent::new(4242, "bash");
        e.command_line = vec!["bash".into(), "-c".into(), "x \"y\" ]".into()];
        Alert::new(&rule, AlertProcess::from_event(&e, None), SystemTime::now())
    }

    /// A UDP syslog collector on loopback, and the target that reaches it.
    fn udp_collector() -> (UdpSocket, SyslogTarget) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let target = format!("udp://{}", server.local_addr().unwrap())
            .parse()
            .unwrap();
        (server, target)
    }

    #[test]
    fn alerts_reach_a_udp_collector_as_rfc5424() {
        let (server, target) = udp_collector();
        let sink = SyslogSink::open(target).unwrap();
        sink.send(&alert()).unwrap();
        let mut buf = [0u8; 8192];
        let n = server.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        // critical (2) in authpriv (10): 10 * 8 + 2.
        assert!(msg.starts_with("<82>1 "), "{msg}");
        assert!(
            msg.contains(" daemoneye-agent ")
                && msg.contains(" reverse-shell [alert@32473 rule=\"reverse-shell\""),
            "{msg}"
        );
        assert!(msg.contains("pid=\"4242\""), "{msg}");
        let json = &msg[msg.find("] {").unwrap() + 2..];
        let back: Alert = serde_json::from_str(json).unwrap();
        assert_eq!(back, alert_with_time(&back));
    }

    #[tokio::test]
    async fn a_checkpoint_reaches_a_udp_collector_with_its_head() {
        let (server, target) = udp_collector();
        let worker =
            SinkWorker::start(SyslogSink::open(target).unwrap(), WorkerConfig::default()).unwrap();
        let cp = crate::sink::test_checkpoint(3);
        worker.send_checkpoint(cp.clone()).await.unwrap();
        let mut buf = [0u8; 8192];
        let n = server.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        // Something was lost: warning (4) in authpriv (10).
        assert!(msg.starts_with("<84>1 2025-"), "{msg}");
        assert!(
            msg.contains(&format!(
                " checkpoint [checkpoint@32473 seq=\"3\" head=\"{}\"",
                cp.head
            )),
            "{msg}"
        );
        let json = &msg[msg.find("] {").unwrap() + 2..];
        assert_eq!(json.parse::<crate::ledger::Anchor>().unwrap(), cp.anchor());
        let stats = worker.checkpoint_stats();
        worker
            .close(tokio::time::Instant::now() + Duration::from_secs(10))
            .await;
        assert_eq!(stats.snapshot().delivered, 1);
    }

    fn alert_with_time(a: &Alert) -> Alert {
        let mut b = alert();
        b.raised_at = a.raised_at;
        b.observed_at = a.observed_at;
        b
    }

    #[tokio::test]
    async fn a_missing_collector_is_an_error_not_a_hang_and_failures_count() {
        assert!(SyslogSink::open(SyslogTarget::Unix("/nonexistent/log".into())).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let sink = SyslogSink::open(SyslogTarget::Unix(path)).unwrap();
        sink.send(&alert()).unwrap();
        drop(server); // the collector goes away
        assert!(sink.send(&alert()).is_err());
        // Behind its worker: counted failed, not retried.
        let worker = SinkWorker::start(sink, WorkerConfig::default()).unwrap();
        worker.try_send(alert()).unwrap();
        let stats = worker
            .close(tokio::time::Instant::now() + Duration::from_secs(10))
            .await;
        assert_eq!((stats.failed, stats.retries, stats.delivered), (1, 0, 0));
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "/dev/log".parse::<SyslogTarget>().unwrap(),
            SyslogTarget::Unix("/dev/log".into())
        );
        assert!("udp://127.0.0.1:514".parse::<SyslogTarget>().is_ok());
        assert!("udp://nowhere".parse::<SyslogTarget>().is_err());
        assert!("log".parse::<SyslogTarget>().is_err());
        assert_eq!(sd_escape("a\"b]c\\"), "a\\\"b\\]c\\\\");
    }
}
