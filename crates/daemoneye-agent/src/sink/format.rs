//! The formats a sink writes alerts in: the native record (the default),
//! Elastic Common Schema (ECS) or OCSF Process Activity, chosen per sink.
//!
//! - [`AlertFormat::Native`]: the [`Alert`] as `serde_json` writes it,
//!   what `daemoneye-cli` and earlier versions read.
//! - [`AlertFormat::Ecs`]: an ECS 9.3 document (`@timestamp`, `event.*`,
//!   `rule.*`, `threat.*`, `process.*` with `process.parent.*`, `host.*`,
//!   `agent.*`), every field one of ECS's own (tested against the field
//!   list of ECS 9.3.0, committed as test data). Facts ECS has no field for
//!   are left out: a BLAKE3 executable hash (ECS has `sha256` and others,
//!   not BLAKE3).
//! - [`AlertFormat::Ocsf`]: an OCSF 1.2 Process Activity event (class
//!   1007, category 1), the matched process as `process`, its parent as
//!   `actor.process`, the host as `device`, the rule and its ATT&CK ids
//!   under `unmapped` (Process Activity has no attribute for them).
//!
//! Checkpoints keep their native form in every format: they are what
//! `daemoneye-cli ledger verify --anchor` reads back.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::alert::{Alert, AlertProcess, Severity};

/// The ECS version the documents follow.
pub const ECS_VERSION: &str = "9.3.0";
/// The OCSF version the events follow.
pub const OCSF_VERSION: &str = "1.2.0";

/// How a sink writes an alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// The agent's own record.
    #[default]
    Native,
    /// Elastic Common Schema.
    Ecs,
    /// OCSF Process Activity (class 1007).
    Ocsf,
}

impl AlertFormat {
    /// The name as written in the config (`native`, `ecs`, `ocsf`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Ecs => "ecs",
            Self::Ocsf => "ocsf",
        }
    }

    /// `alert` in this format, as one JSON document.
    ///
    /// # Errors
    /// When `serde_json` cannot encode it (it can always, in practice).
    pub fn encode(self, alert: &Alert, host: &Host) -> serde_json::Result<String> {
        match self {
            Self::Native => serde_json::to_string(alert),
            Self::Ecs => serde_json::to_string(&ecs(alert, host)),
            Self::Ocsf => serde_json::to_string(&ocsf(alert, host)),
        }
    }
}

impl fmt::Display for AlertFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlertFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(Self::Native),
            "ecs" => Ok(Self::Ecs),
            "ocsf" => Ok(Self::Ocsf),
            other => Err(format!(
                "unknown alert format {other:?}: expected native, ecs or ocsf"
            )),
        }
    }
}

/// The host alerts are raised on, as the SIEM formats name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The kernel's host name.
    pub hostname: String,
    /// `/etc/machine-id`, when the host has one.
    pub id: Option<String>,
}

impl Host {
    /// This host: `/proc/sys/kernel/hostname` and `/etc/machine-id` (either
    /// unreadable: `localhost`, no id).
    pub fn local() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "localhost".to_owned()),
            id: read("/etc/machine-id"),
        }
    }
}

fn time_of(unix_ns: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix_ns).unwrap_or(0))
}

fn rfc3339(unix_ns: i64) -> String {
    humantime::format_rfc3339_nanos(time_of(unix_ns)).to_string()
}

/// ECS `event.severity` (and `event.risk_score`): the scores Elastic's
/// detection rules give their four severities, 1 for information.
const fn ecs_score(s: Severity) -> u8 {
    match s {
        Severity::Info => 1,
        Severity::Low => 21,
        Severity::Medium => 47,
        Severity::High => 73,
        Severity::Critical => 99,
    }
}

/// OCSF `severity_id`.
const fn ocsf_severity(s: Severity) -> u8 {
    match s {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// Inserts `value` at the dotted `path` of `doc`, making the objects on
/// the way.
fn put(doc: &mut Map<String, Value>, path: &str, value: impl Into<Value>) {
    let mut at = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            at.insert(part.to_owned(), value.into());
            return;
        }
        let next = at
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(map) = next else { return };
        at = map;
    }
}

fn put_some<T: Into<Value>>(doc: &mut Map<String, Value>, path: &str, value: Option<T>) {
    if let Some(v) = value {
        put(doc, path, v);
    }
}

/// The process is the host as a whole (a host-wide anomaly), not one process.
fn is_host(p: &AlertProcess) -> bool {
    p.pid == 0 && p.process_key.is_none()
}

fn ecs(alert: &Alert, host: &Host) -> Value {
    let mut d = Map::new();
    let p = &alert.process;
    put(&mut d, "@timestamp", rfc3339(alert.observed_at));
    put(
        &mut d,
        "message",
        if is_host(p) {
            alert.rule_name.clone()
        } else {
            format!("{}: {} (pid {})", alert.rule_name, p.name, p.pid)
        },
    );
    put(&mut d, "ecs.version", ECS_VERSION);
    put(&mut d, "event.kind", "alert");
    let category = if alert.file.is_some() {
        json!(["process", "file"])
    } else {
        json!(["process"])
    };
    put(&mut d, "event.category", category);
    put(&mut d, "event.type", json!(["info"]));
    put(&mut d, "event.module", "daemoneye");
    put(&mut d, "event.dataset", "daemoneye.alert");
    put(&mut d, "event.created", rfc3339(alert.raised_at));
    put(&mut d, "event.severity", ecs_score(alert.severity));
    put(
        &mut d,
        "event.risk_score",
        f64::from(ecs_score(alert.severity)),
    );
    put(&mut d, "rule.id", alert.rule_id.clone());
    put(&mut d, "rule.name", alert.rule_name.clone());
    put(&mut d, "rule.ruleset", "daemoneye");
    put(&mut d, "log.level", alert.severity.to_string());
    if !alert.mitre.is_empty() {
        // ATT&CK sub-techniques (`T1059.004`) have a field of their own;
        // their technique is the part before the dot.
        let mut techniques: Vec<&str> = Vec::new();
        let mut subs: Vec<&str> = Vec::new();
        for id in &alert.mitre {
            let technique = match id.split_once('.') {
                Some((t, _)) => {
                    subs.push(id);
                    t
                }
                None => id,
            };
            if !techniques.contains(&technique) {
                techniques.push(technique);
            }
        }
        put(&mut d, "threat.framework", "MITRE ATT&CK");
        put(&mut d, "threat.technique.id", json!(techniques));
        if !subs.is_empty() {
            put(&mut d, "threat.technique.subtechnique.id", json!(subs));
        }
    }
    if !is_host(p) {
        put(&mut d, "process.pid", p.pid);
        put(&mut d, "process.name", p.name.clone());
        put_some(&mut d, "process.entity_id", p.process_key.clone());
        put_some(&mut d, "process.executable", p.executable_path.clone());
        if !p.command_line.is_empty() {
            put(&mut d, "process.args", json!(p.command_line));
            put(&mut d, "process.args_count", p.command_line.len());
            put(&mut d, "process.command_line", p.command_line.join(" "));
        }
        if p.hash_algorithm.as_deref() == Some("sha256") {
            put_some(&mut d, "process.hash.sha256", p.executable_hash.clone());
        }
        put_some(&mut d, "process.user.id", p.user_id.map(|u| u.to_string()));
        put_some(&mut d, "process.parent.pid", p.ppid);
        put_some(&mut d, "process.parent.name", p.parent_name.clone());
        put_some(
            &mut d,
            "process.parent.executable",
            p.parent_executable_path.clone(),
        );
    }
    // A file rule's file (what was written, made setuid, replaced).
    if let Some(path) = &alert.file {
        put(&mut d, "file.path", path.clone());
        put(&mut d, "file.name", path.rsplit('/').next().unwrap_or(path));
    }
    put(&mut d, "host.name", host.hostname.clone());
    put(&mut d, "host.hostname", host.hostname.clone());
    put(&mut d, "host.os.type", "linux");
    put_some(&mut d, "host.id", host.id.clone());
    put(&mut d, "agent.type", "daemoneye");
    put(&mut d, "agent.name", "daemoneye-agent");
    put(&mut d, "agent.version", env!("CARGO_PKG_VERSION"));
    Value::Object(d)
}

/// OCSF Process Activity: class 1007 in category 1 (System Activity).
const OCSF_CLASS: u32 = 1007;
/// `activity_id` 99, "Other": an alert about a process, not one of the
/// class's launch, terminate, open, inject or set-uid activities.
const OCSF_ACTIVITY_OTHER: u32 = 99;

fn ocsf_file(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    json!({ "path": path, "name": name, "type_id": 1 })
}

fn ocsf(alert: &Alert, host: &Host) -> Value {
    let p = &alert.process;
    let mut d = Map::new();
    put(&mut d, "class_uid", OCSF_CLASS);
    put(&mut d, "class_name", "Process Activity");
    put(&mut d, "category_uid", 1);
    put(&mut d, "category_name", "System Activity");
    put(&mut d, "activity_id", OCSF_ACTIVITY_OTHER);
    put(&mut d, "activity_name", "Alert");
    put(
        &mut d,
        "type_uid",
        u64::from(OCSF_CLASS) * 100 + u64::from(OCSF_ACTIVITY_OTHER),
    );
    put(&mut d, "severity_id", ocsf_severity(alert.severity));
    put(&mut d, "severity", alert.severity.to_string());
    put(&mut d, "time", alert.observed_at / 1_000_000);
    put(&mut d, "message", alert.rule_name.clone());
    put(&mut d, "metadata.version", OCSF_VERSION);
    put(&mut d, "metadata.product.name", "DaemonEye");
    put(&mut d, "metadata.product.vendor_name", "DaemonEye");
    put(
        &mut d,
        "metadata.product.version",
        env!("CARGO_PKG_VERSION"),
    );
    put(&mut d, "metadata.logged_time", alert.raised_at / 1_000_000);
    put(&mut d, "device.hostname", host.hostname.clone());
    put(&mut d, "device.type_id", 1); // Server
    put(&mut d, "device.os.type_id", 200); // Linux
    put(&mut d, "device.os.name", "Linux");
    put_some(&mut d, "device.uid", host.id.clone());

    let mut process = Map::new();
    put(&mut process, "pid", p.pid);
    put(&mut process, "name", p.name.clone());
    put_some(&mut process, "uid", p.process_key.clone());
    if !p.command_line.is_empty() {
        put(&mut process, "cmd_line", p.command_line.join(" "));
    }
    if let Some(path) = &p.executable_path {
        let mut file = ocsf_file(path);
        if let (Some("sha256"), Some(hash), Value::Object(f)) =
            (p.hash_algorithm.as_deref(), &p.executable_hash, &mut file)
        {
            // algorithm_id 3: SHA-256.
            f.insert(
                "hashes".to_owned(),
                json!([{ "algorithm_id": 3, "algorithm": "SHA-256", "value": hash }]),
            );
        }
        put(&mut process, "file", file);
    }
    put_some(&mut process, "user.uid", p.user_id.map(|u| u.to_string()));
    let mut parent = Map::new();
    put_some(&mut parent, "pid", p.ppid);
    put_some(&mut parent, "name", p.parent_name.clone());
    put_some(
        &mut parent,
        "file",
        p.parent_executable_path.as_deref().map(ocsf_file),
    );
    if !parent.is_empty() {
        put(
            &mut process,
            "parent_process",
            Value::Object(parent.clone()),
        );
    }
    put(&mut d, "process", Value::Object(process));
    // The actor of the activity: the parent, which started the process;
    // unknown (an empty actor) when its parent is not known.
    put(&mut d, "actor.process", Value::Object(parent));
    put(&mut d, "unmapped.rule_id", alert.rule_id.clone());
    put(&mut d, "unmapped.rule_name", alert.rule_name.clone());
    put(&mut d, "unmapped.mitre", json!(alert.mitre));
    // Process Activity has no file of its own besides the process's: a
    // file rule's file is unmapped.
    put_some(
        &mut d,
        "unmapped.file",
        alert.file.as_deref().map(ocsf_file),
    );
    Value::Object(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use collector_core::{HashAlgorithm, ProcessEvent};

    use super::*;

    /// ECS 9.3.0's fields and their types (`testdata/`).
    fn ecs_fields() -> std::collections::HashMap<&'static str, &'static str> {
        include_str!("../../testdata/ecs-9.3.0-fields.csv")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(','))
            .collect()
    }

    /// Every leaf of `v` as a dotted name, arrays of scalars as one leaf.
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&name, v, out);
                }
            }
            other => out.push((prefix.to_owned(), other.clone())),
        }
    }

    struct Rule(&'static str, Vec<String>);

    impl crate::alert::AlertRule for Rule {
        fn id(&self) -> &str {
            self.0
        }
        fn name(&self) -> &'static str {
            "A rule"
        }
        fn severity(&self) -> Severity {
            Severity::High
        }
        fn mitre(&self) -> &[String] {
            &self.1
        }
    }

    /// An alert with every fact an alert can carry.
    fn full_alert() -> Alert {
        let mut parent = ProcessEvent::new(1, "nginx");
        parent.executable_path = Some("/usr/sbin/nginx".into());
        let mut e = ProcessEvent::new(4242, "sh");
        e.ppid = Some(1);
        e.executable_path = Some("/usr/bin/dash".into());
        e.command_line = vec!["sh".into(), "-c".into(), "id".into()];
        e.executable_hash = Some("ab".repeat(32));
        e.hash_algorithm = Some(HashAlgorithm::Sha256);
        e.user_id = Some(33);
        e.process_key = Some(collector_core::ProcessKey::new(
            collector_core::BootId::from_bytes([7; 16]),
            4242,
            99,
        ));
        let rule = Rule("web-shell", vec!["T1059.004".into(), "T1505".into()]);
        Alert::new(
            &rule,
            AlertProcess::from_event(&e, Some(&parent)),
            SystemTime::now(),
        )
    }

    fn host() -> Host {
        Host {
            hostname: "web-1".into(),
            id: Some("0123456789abcdef0123456789abcdef".into()),
        }
    }

    fn every_alert_kind() -> Vec<Alert> {
        let rule = Rule("fork-bomb", Vec::new());
        let bare = Alert::new(
            &rule,
            AlertProcess::from_event(&ProcessEvent::new(9, "x"), None),
            SystemTime::now(),
        );
        let hostwide = Alert::new(&rule, AlertProcess::host(), SystemTime::now());
        vec![full_alert(), bare, file_alert(), hostwide]
    }

    /// A file rule's alert: its file set.
    fn file_alert() -> Alert {
        let mut alert = full_alert();
        alert.file = Some("/etc/cron.d/evil".to_owned());
        alert
    }

    #[test]
    fn a_file_rules_file_is_in_ecs_and_ocsf() {
        let ecs: Value =
            serde_json::from_str(&AlertFormat::Ecs.encode(&file_alert(), &host()).unwrap())
                .unwrap();
        assert_eq!(ecs["file"]["path"], "/etc/cron.d/evil");
        assert_eq!(ecs["file"]["name"], "evil");
        assert_eq!(ecs["event"]["category"], json!(["process", "file"]));
        let ocsf: Value =
            serde_json::from_str(&AlertFormat::Ocsf.encode(&file_alert(), &host()).unwrap())
                .unwrap();
        assert_eq!(ocsf["unmapped"]["file"]["path"], "/etc/cron.d/evil");
        assert_eq!(ocsf["unmapped"]["file"]["name"], "evil");
        // Without a file, neither has one.
        for format in [AlertFormat::Ecs, AlertFormat::Ocsf] {
            let doc: Value =
                serde_json::from_str(&format.encode(&full_alert(), &host()).unwrap()).unwrap();
            assert!(doc.get("file").is_none() && doc["unmapped"].get("file").is_none());
        }
    }

    #[test]
    fn every_ecs_field_is_in_the_ecs_reference_with_a_value_of_its_type() {
        let fields = ecs_fields();
        assert!(fields.len() > 2000, "the reference list is there");
        for alert in every_alert_kind() {
            let doc: Value =
                serde_json::from_str(&AlertFormat::Ecs.encode(&alert, &host()).unwrap()).unwrap();
            let mut out = Vec::new();
            leaves("", &doc, &mut out);
            for (name, value) in out {
                let Some(ty) = fields.get(name.as_str()) else {
                    panic!("{name} is not an ECS {ECS_VERSION} field");
                };
                let scalars: Vec<&Value> = match &value {
                    Value::Array(a) => a.iter().collect(),
                    v => vec![v],
                };
                for v in scalars {
                    let ok = match *ty {
                        "keyword" | "wildcard" | "match_only_text" | "text"
                        | "constant_keyword" | "ip" => v.is_string(),
                        "long" => v.is_u64() || v.is_i64(),
                        "float" | "scaled_float" | "double" => v.is_number(),
                        "date" => v
                            .as_str()
                            .is_some_and(|s| humantime::parse_rfc3339(s).is_ok()),
                        "boolean" => v.is_boolean(),
                        other => panic!("{name}: type {other} not expected in an alert"),
                    };
                    assert!(ok, "{name} is a {ty}, not {v}");
                }
            }
        }
    }

    #[test]
    fn ecs_carries_the_process_its_parent_the_rule_and_the_techniques() {
        let alert = full_alert();
        let doc: Value =
            serde_json::from_str(&AlertFormat::Ecs.encode(&alert, &host()).unwrap()).unwrap();
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["rule"]["id"], "web-shell");
        assert_eq!(doc["process"]["pid"], 4242);
        assert_eq!(doc["process"]["executable"], "/usr/bin/dash");
        assert_eq!(doc["process"]["args"], json!(["sh", "-c", "id"]));
        assert_eq!(doc["process"]["command_line"], "sh -c id");
        assert_eq!(doc["process"]["hash"]["sha256"], "ab".repeat(32));
        assert_eq!(doc["process"]["user"]["id"], "33");
        assert_eq!(doc["process"]["parent"]["pid"], 1);
        assert_eq!(doc["process"]["parent"]["name"], "nginx");
        assert_eq!(doc["process"]["parent"]["executable"], "/usr/sbin/nginx");
        assert!(doc["process"]["entity_id"]
            .as_str()
            .unwrap()
            .ends_with(":4242:99"));
        assert_eq!(doc["threat"]["technique"]["id"], json!(["T1059", "T1505"]));
        assert_eq!(
            doc["threat"]["technique"]["subtechnique"]["id"],
            json!(["T1059.004"])
        );
        assert_eq!(doc["host"]["name"], "web-1");
        assert_eq!(doc["event"]["severity"], 73);
        let at = humantime::parse_rfc3339(doc["@timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            u128::try_from(alert.observed_at).unwrap()
        );
    }

    #[test]
    fn a_blake3_hash_and_a_host_wide_alert_carry_no_process_field_ecs_lacks() {
        let mut alert = full_alert();
        alert.process.hash_algorithm = Some("blake3".into());
        let doc: Value =
            serde_json::from_str(&AlertFormat::Ecs.encode(&alert, &host()).unwrap()).unwrap();
        assert!(doc["process"].get("hash").is_none(), "{doc}");
        let hostwide = every_alert_kind().pop().unwrap();
        let doc: Value =
            serde_json::from_str(&AlertFormat::Ecs.encode(&hostwide, &host()).unwrap()).unwrap();
        assert!(doc.get("process").is_none(), "{doc}");
        assert!(
            doc.get("threat").is_none(),
            "no technique, no threat: {doc}"
        );
    }

    #[test]
    fn ocsf_is_a_process_activity_with_its_required_attributes() {
        for alert in every_alert_kind() {
            let doc: Value =
                serde_json::from_str(&AlertFormat::Ocsf.encode(&alert, &host()).unwrap()).unwrap();
            // Required by OCSF 1.2's base event, system category and
            // Process Activity class.
            for key in [
                "activity_id",
                "category_uid",
                "class_uid",
                "type_uid",
                "severity_id",
                "time",
                "metadata",
                "device",
                "actor",
                "process",
            ] {
                assert!(doc.get(key).is_some(), "{key} missing: {doc}");
            }
            assert_eq!(doc["class_uid"], 1007);
            assert_eq!(doc["type_uid"], 100_799);
            assert_eq!(doc["metadata"]["version"], OCSF_VERSION);
            assert!(doc["metadata"]["product"]["name"].is_string());
        }
        let doc: Value =
            serde_json::from_str(&AlertFormat::Ocsf.encode(&full_alert(), &host()).unwrap())
                .unwrap();
        assert_eq!(doc["severity_id"], 4);
        assert_eq!(doc["process"]["pid"], 4242);
        assert_eq!(doc["process"]["file"]["path"], "/usr/bin/dash");
        assert_eq!(doc["process"]["file"]["name"], "dash");
        assert_eq!(doc["process"]["file"]["hashes"][0]["algorithm_id"], 3);
        assert_eq!(doc["actor"]["process"]["name"], "nginx");
        assert_eq!(doc["process"]["parent_process"]["pid"], 1);
        assert_eq!(doc["unmapped"]["rule_id"], "web-shell");
        assert_eq!(doc["device"]["hostname"], "web-1");
    }

    #[test]
    fn native_is_the_alert_itself_and_names_parse_back() {
        let alert = full_alert();
        let back: Alert =
            serde_json::from_str(&AlertFormat::Native.encode(&alert, &host()).unwrap()).unwrap();
        assert_eq!(back, alert);
        let names: HashSet<_> = [AlertFormat::Native, AlertFormat::Ecs, AlertFormat::Ocsf]
            .into_iter()
            .map(|f| f.as_str().parse::<AlertFormat>().unwrap())
            .collect();
        assert_eq!(names.len(), 3);
        let e = "cef".parse::<AlertFormat>().unwrap_err();
        assert!(e.contains("cef") && e.contains("ecs"), "{e}");
    }

    #[test]
    fn put_builds_nested_objects() {
        let mut d = Map::new();
        put(&mut d, "a.b.c", 1);
        put(&mut d, "a.b.d", 2);
        put(&mut d, "a.e", 3);
        assert_eq!(
            Value::Object(d),
            json!({"a": {"b": {"c": 1, "d": 2}, "e": 3}})
        );
    }
}
