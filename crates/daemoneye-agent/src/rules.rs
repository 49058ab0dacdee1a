//! Detection rules: what they are, how they are loaded and refused.
//!
//! A rule file is TOML with one `[[rule]]` table per rule:
//!
//! ```toml
//! [[rule]]
//! id = "exec-from-temp-dir"
//! name = "Execution from a temporary directory"
//! description = "A program runs from /tmp, /var/tmp or /dev/shm."
//! severity = "high"                      # info | low | medium | high | critical
//! sql = "SELECT * FROM processes WHERE exe LIKE '/tmp/%'"
//! tags = ["execution"]
//! mitre = ["T1059"]                      # optional ATT&CK technique ids
//! ```
//!
//! The `sql` is one `SELECT` over the `processes` table (see
//! [`engine`](crate::engine) for its columns); each row it returns is a
//! match and must carry the `pid` column. Whether a rule is acceptable is
//! decided by [`RuleEngine::new`](crate::engine::RuleEngine::new) and
//! [`validate`](crate::engine::validate): SQLite itself parses the
//! statement under an authorizer that refuses anything but reading.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How bad a match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Unusual.
    Low,
    /// Suspicious.
    Medium,
    /// Likely malicious.
    High,
    /// Act now.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        })
    }
}

/// One detection rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable id, `[a-z0-9-]+`.
    pub id: String,
    /// Short human name.
    pub name: String,
    /// What it detects and why it matters.
    #[serde(default)]
    pub description: String,
    /// How bad a match is.
    pub severity: Severity,
    /// One read-only `SELECT` over `processes`.
    pub sql: String,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// MITRE ATT&CK technique ids (`T1059`, `T1059.004`).
    #[serde(default)]
    pub mitre: Vec<String>,
    /// Where the rule came from (a file path, or `builtin`).
    #[serde(skip)]
    pub origin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// A rule (or rule file) that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: rule {rule:?}: {reason}")]
pub struct RuleError {
    /// The file (or `builtin`).
    pub origin: String,
    /// The rule's id, or `-` when the file itself is broken.
    pub rule: String,
    /// Why.
    pub reason: String,
}

fn refuse(origin: &str, rule: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        origin: origin.to_owned(),
        rule: rule.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a rule's fields (not its SQL: see [`crate::engine::validate`]).
///
/// # Errors
/// The first field that is wrong.
pub fn check_fields(rule: &Rule) -> Result<(), RuleError> {
    let bad = |reason: &str| Err(refuse(&rule.origin, &rule.id, reason));
    if rule.id.is_empty()
        || !rule
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("id must be non-empty lowercase letters, digits and '-'");
    }
    if rule.name.trim().is_empty() {
        return bad("name is empty");
    }
    if rule.sql.trim().is_empty() {
        return bad("sql is empty");
    }
    if let Some(t) = rule.mitre.iter().find(|t| !is_technique_id(t)) {
        return Err(refuse(
            &rule.origin,
            &rule.id,
            format!("{t:?} is not an ATT&CK technique id (T1234 or T1234.001)"),
        ));
    }
    Ok(())
}

fn is_technique_id(t: &str) -> bool {
    let Some(rest) = t.strip_prefix('T') else {
        return false;
    };
    let (main, sub) = rest.split_once('.').unwrap_or((rest, "000"));
    main.len() == 4
        && main.bytes().all(|b| b.is_ascii_digit())
        && sub.len() == 3
        && sub.bytes().all(|b| b.is_ascii_digit())
}

/// Parses the rules of one TOML text. Each rule is returned or refused on
/// its own: one bad rule does not take the others down.
pub fn parse(text: &str, origin: &str) -> (Vec<Rule>, Vec<RuleError>) {
    let file: RuleFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return (
                Vec::new(),
                vec![refuse(origin, "-", e.message().to_owned())],
            )
        }
    };
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for mut rule in file.rule {
        origin.clone_into(&mut rule.origin);
        match check_fields(&rule) {
            Ok(()) => ok.push(rule),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

/// Reads one rule file.
pub fn load_file(path: &Path) -> (Vec<Rule>, Vec<RuleError>) {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => (
            Vec::new(),
            vec![refuse(&origin, "-", format!("cannot read: {e}"))],
        ),
    }
}

/// Reads every `*.toml` file of a directory, in name order.
pub fn load_dir(dir: &Path) -> (Vec<Rule>, Vec<RuleError>) {
    let origin = dir.display().to_string();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) => {
            return (
                Vec::new(),
                vec![refuse(&origin, "-", format!("cannot list: {e}"))],
            )
        }
    };
    files.sort();
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for f in files {
        let (o, b) = load_file(&f);
        ok.extend(o);
        bad.extend(b);
    }
    (ok, bad)
}

/// The built-in rule pack, shipped inside the binary.
///
/// # Errors
/// Never in a released build (a test checks the pack); typed for safety.
pub fn builtin() -> Result<Vec<Rule>, RuleError> {
    let (ok, bad) = parse(include_str!("../rules/builtin.toml"), "builtin");
    match bad.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(ok),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_bad_rule_is_refused_alone_and_named() {
        let text = r#"
            [[rule]]
            id = "ok-rule"
            name = "fine"
            severity = "low"
            sql = "SELECT * FROM processes"

            [[rule]]
            id = "Bad Id"
            name = "bad"
            severity = "low"
            sql = "SELECT 1"

            [[rule]]
            id = "bad-mitre"
            name = "bad"
            severity = "low"
            sql = "SELECT 1"
            mitre = ["X1"]
        "#;
        let (ok, bad) = parse(text, "rules/x.toml");
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 2);
        assert_eq!(
            (bad[0].origin.as_str(), bad[0].rule.as_str()),
            ("rules/x.toml", "Bad Id")
        );
        assert!(bad[1].reason.contains("ATT&CK"));
    }

    #[test]
    fn unknown_fields_and_broken_toml_are_refused() {
        let (ok, bad) = parse(
            "[[rule]]\nid='a'\nname='a'\nseverity='low'\nsql='SELECT 1'\nsevrity='x'\n",
            "f",
        );
        assert!(ok.is_empty() && bad.len() == 1, "{bad:?}");
        let (ok, bad) = parse("[[rule]\n", "f");
        assert!(ok.is_empty() && bad[0].rule == "-");
        let (_, bad) = parse(
            "[[rule]]\nid='a'\nname='a'\nseverity='urgent'\nsql='SELECT 1'\n",
            "f",
        );
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn technique_ids() {
        for ok in ["T1059", "T1059.004"] {
            assert!(is_technique_id(ok), "{ok}");
        }
        for bad in ["T105", "1059", "T1059.4", "T1059.0041", "t1059"] {
            assert!(!is_technique_id(bad), "{bad}");
        }
    }
}
