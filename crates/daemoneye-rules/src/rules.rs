//! Detection rules: what they are, how they are loaded and refused.
//!
//! A rule file is TOML (`*.toml`) or YAML (`*.yaml`, `*.yml`); both hold
//! the same fields, checked as strictly. In TOML, one `[[rule]]` table per
//! rule:
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
//! In YAML, the same: a top-level `rule` list (the key TOML's `[[rule]]`
//! makes), one mapping per rule:
//!
//! ```yaml
//! rule:
//!   - id: exec-from-temp-dir
//!     name: Execution from a temporary directory
//!     description: A program runs from /tmp, /var/tmp or /dev/shm.
//!     severity: high                     # info | low | medium | high | critical
//!     sql: >-
//!       SELECT * FROM processes
//!       WHERE exe LIKE '/tmp/%'
//!     tags: [execution]
//!     mitre: [T1059]                     # optional ATT&CK technique ids
//! ```
//!
//! A field that is not one of these, a missing `id`, `name`, `severity` or
//! `sql`, or a severity not in the list refuses the rule (TOML, YAML alike);
//! a file that is not valid TOML or YAML is refused whole, naming the file
//! (and, for YAML, the line and column). A file named other than `*.yaml` or
//! `*.yml` is read as TOML. A file larger than [`MAX_RULE_FILE_BYTES`] is
//! refused whole, without being read further.
//!
//! The `sql` is one `SELECT` over the `processes` table (see
//! [`engine`](crate::engine) for its columns); each row it returns is a
//! match and must carry the `pid` column. Whether a rule is acceptable is
//! decided by [`RuleEngine::new`](crate::engine::RuleEngine::new) and
//! [`validate`](crate::engine::validate): SQLite itself parses the
//! statement under an authorizer that refuses anything but reading.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use daemoneye_store::alert::Severity;

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

impl daemoneye_store::AlertRule for Rule {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn severity(&self) -> Severity {
        self.severity
    }
    fn mitre(&self) -> &[String] {
        &self.mitre
    }
}

/// A whole rule file, TOML or YAML: `rule` is the list of rules.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// The format of a rule file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// `*.toml`: one `[[rule]]` table per rule.
    Toml,
    /// `*.yaml`, `*.yml`: a top-level `rule:` list, one mapping per rule.
    Yaml,
}

impl Format {
    /// The format a rules directory reads a file as, by its extension
    /// (`toml`, `yaml`, `yml`); `None` for any other file.
    pub fn of_rule_file(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "toml" => Some(Self::Toml),
            "yaml" | "yml" => Some(Self::Yaml),
            _ => None,
        }
    }

    /// The format of a file named on purpose (`rules validate FILE`):
    /// YAML for `*.yaml` and `*.yml`, TOML otherwise.
    pub fn of(path: &Path) -> Self {
        Self::of_rule_file(path).unwrap_or(Self::Toml)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Toml => "TOML",
            Self::Yaml => "YAML",
        })
    }
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
    parse_as(text, origin, Format::Toml)
}

/// Parses the rules of one text in `format`, as [`parse`] does TOML.
pub fn parse_as(text: &str, origin: &str, format: Format) -> (Vec<Rule>, Vec<RuleError>) {
    let file = match format {
        Format::Toml => toml::from_str::<RuleFile>(text).map_err(|e| e.message().to_owned()),
        Format::Yaml if crate::sigma::is_sigma(text) => return crate::sigma::parse(text, origin),
        Format::Yaml => parse_yaml(text),
    };
    let file = match file {
        Ok(f) => f,
        Err(reason) => return (Vec::new(), vec![refuse(origin, "-", reason)]),
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

// Why `yaml_serde`: `serde_yaml` is archived. Of its successors,
// `yaml_serde` is the YAML Organization's (a maintained, released fork with
// the same API and error locations, MIT OR Apache-2.0, MSRV 1.82), and costs
// two small crates (~3 s of a debug build). `serde_norway` is the same code
// kept by one person; `serde_yaml_ng` is MIT-only and on the archived
// `unsafe-libyaml`; `serde-saphyr` is safe Rust, but about five times the
// build time (seven more crates) and needs Rust 1.89, above our MSRV.

/// The rules of a YAML text. A file with no document at all (empty, or
/// only comments) holds no rules, as an empty TOML file does.
fn parse_yaml(text: &str) -> Result<RuleFile, String> {
    match yaml_serde::from_str::<Option<RuleFile>>(text) {
        Ok(file) => Ok(file.unwrap_or(RuleFile { rule: Vec::new() })),
        Err(e) => Err(format!("invalid YAML: {e}")),
    }
}

/// Reads one rule file, as YAML when it is named `*.yaml` or `*.yml`, as
/// TOML otherwise (see [`Format::of`]).
pub fn load_file(path: &Path) -> (Vec<Rule>, Vec<RuleError>) {
    load_file_as(path, Format::of(path))
}

/// The largest rule file read: 1 MiB (the built-in pack is a few KiB). A
/// bigger file is refused whole, after reading one byte past the cap, so
/// a file that never ends (a link to `/dev/zero`) is refused at once.
pub const MAX_RULE_FILE_BYTES: u64 = 1 << 20;

fn load_file_as(path: &Path, format: Format) -> (Vec<Rule>, Vec<RuleError>) {
    let origin = path.display().to_string();
    match read_capped(path) {
        Ok(text) => parse_as(&text, &origin, format),
        Err(reason) => (Vec::new(), vec![refuse(&origin, "-", reason)]),
    }
}

/// The text of `path`, at most [`MAX_RULE_FILE_BYTES`] of it.
fn read_capped(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_RULE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_RULE_FILE_BYTES {
        return Err(format!(
            "larger than {} KiB: not read",
            MAX_RULE_FILE_BYTES / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8 ({e})"))
}

/// The deepest subdirectory [`load_dir`] reads (the directory itself is
/// depth 0): a checkout of the `rules/linux` of `SigmaHQ` is 2 deep.
pub const MAX_DIR_DEPTH: usize = 8;

/// The most rule files [`load_dir`] reads; the rest are refused, named by
/// their directory.
pub const MAX_RULE_FILES: usize = 10_000;

/// Reads every `*.toml`, `*.yaml` and `*.yml` file of a directory and its
/// subdirectories (at most [`MAX_DIR_DEPTH`] deep, [`MAX_RULE_FILES`] in
/// all, symbolic links to directories not followed), in path order; other
/// files are left alone. A YAML file holding Sigma rules is read as Sigma
/// ([`crate::sigma`]), so a directory of Sigma rules works beside ours.
pub fn load_dir(dir: &Path) -> (Vec<Rule>, Vec<RuleError>) {
    let (mut files, mut bad) = (Vec::new(), Vec::new());
    let mut dirs = vec![(dir.to_path_buf(), 0)];
    while let Some((at, depth)) = dirs.pop() {
        let entries = match std::fs::read_dir(&at) {
            Ok(entries) => entries,
            Err(e) => {
                bad.push(refuse(
                    &at.display().to_string(),
                    "-",
                    format!("cannot list: {e}"),
                ));
                continue;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && depth < MAX_DIR_DEPTH {
                dirs.push((path, depth + 1));
            } else if let Some(format) = Format::of_rule_file(&path).filter(|_| !is_dir) {
                if files.len() == MAX_RULE_FILES {
                    bad.push(refuse(
                        &at.display().to_string(),
                        "-",
                        format!("more than {MAX_RULE_FILES} rule files: the rest not read"),
                    ));
                    dirs.clear();
                    break;
                }
                files.push((path, format));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut ok = Vec::new();
    for (f, format) in files {
        let (o, b) = load_file_as(&f, format);
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

    /// One rule file in both formats, every field used, SQL on several lines.
    const SAME_TOML: &str = r#"
[[rule]]
id = "exec-from-temp-dir"
name = "Execution from a temporary directory"
description = "A program runs from /tmp: droppers stage payloads there."
severity = "high"
sql = """
SELECT pid, process_key FROM processes
WHERE exe LIKE '/tmp/%' AND cmdline NOT LIKE '%: %'
"""
tags = ["execution", "staging"]
mitre = ["T1059", "T1059.004"]

[[rule]]
id = "pid-reuse"
name = "PID reused"
severity = "low"
sql = "SELECT pid FROM processes WHERE event_type = 'pid_reused'"
"#;
    const SAME_YAML: &str = r#"
# The same two rules as SAME_TOML.
rule:
  - id: exec-from-temp-dir
    name: Execution from a temporary directory
    description: "A program runs from /tmp: droppers stage payloads there."
    severity: high
    sql: |
      SELECT pid, process_key FROM processes
      WHERE exe LIKE '/tmp/%' AND cmdline NOT LIKE '%: %'
    tags: [execution, staging]
    mitre:
      - T1059
      - T1059.004
  - id: pid-reuse
    name: PID reused
    severity: low
    sql: "SELECT pid FROM processes WHERE event_type = 'pid_reused'"
"#;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn without_origin(mut rules: Vec<Rule>) -> Vec<Rule> {
        for r in &mut rules {
            r.origin.clear();
        }
        rules
    }

    #[test]
    fn a_yaml_file_equal_to_a_toml_file_loads_to_identical_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (toml_rules, bad) = load_file(&write(dir.path(), "r.toml", SAME_TOML));
        assert!(bad.is_empty(), "{bad:?}");
        for name in ["r.yaml", "r.yml"] {
            let path = write(dir.path(), name, SAME_YAML);
            let (yaml_rules, bad) = load_file(&path);
            assert!(bad.is_empty(), "{bad:?}");
            assert_eq!(yaml_rules.len(), 2);
            assert_eq!(yaml_rules[0].origin, path.display().to_string());
            assert_eq!(
                without_origin(yaml_rules),
                without_origin(toml_rules.clone())
            );
        }
    }

    #[test]
    fn the_builtin_pack_written_as_yaml_reads_back_the_same() {
        #[derive(Serialize)]
        struct Out<'a> {
            rule: &'a [Rule],
        }
        let pack = builtin().unwrap();
        let yaml = yaml_serde::to_string(&Out { rule: &pack }).unwrap();
        let (back, bad) = parse_as(&yaml, "builtin", Format::Yaml);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, pack);
    }

    #[test]
    fn broken_yaml_unknown_fields_and_bad_severities_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |extra: &str| {
            format!("rule:\n  - id: a\n    name: a\n    severity: low\n    sql: SELECT pid FROM processes\n{extra}")
        };
        let cases = [
            // Not YAML at all: an unclosed flow sequence.
            ("broken.yaml", "rule: [\n".to_owned(), "-", "invalid YAML"),
            // A tab where YAML allows only spaces.
            (
                "tab.yml",
                "rule:\n\t- id: a\n".to_owned(),
                "-",
                "invalid YAML",
            ),
            (
                "field.yaml",
                rule("    sevrity: high\n"),
                "-",
                "unknown field `sevrity`",
            ),
            (
                "top.yaml",
                "rules:\n  - id: a\n".to_owned(),
                "-",
                "unknown field `rules`",
            ),
            (
                "severity.yaml",
                rule("").replace("severity: low", "severity: urgent"),
                "-",
                "unknown variant `urgent`",
            ),
            (
                "missing.yaml",
                "rule:\n  - id: a\n".to_owned(),
                "-",
                "missing field",
            ),
            ("mitre.yaml", rule("    mitre: [X1]\n"), "a", "ATT&CK"),
        ];
        for (name, text, rule_id, why) in cases {
            let path = write(dir.path(), name, &text);
            let (ok, bad) = load_file(&path);
            assert!(ok.is_empty(), "{name}: {ok:?}");
            assert_eq!(bad.len(), 1, "{name}: {bad:?}");
            let e = &bad[0];
            assert_eq!(e.origin, path.display().to_string(), "{name}");
            assert_eq!(e.rule, rule_id, "{name}: {e}");
            assert!(e.reason.contains(why), "{name}: {e}");
            assert!(e.to_string().contains(name), "{e}");
        }
        // Where YAML can tell, the refusal says the line.
        let (_, bad) = parse_as("rule:\n  - id: a\n    oops: 1\n", "f.yaml", Format::Yaml);
        assert!(bad[0].reason.contains("line 3"), "{}", bad[0]);
    }

    #[test]
    fn an_empty_yaml_file_holds_no_rules_as_an_empty_toml_file() {
        for text in ["", "# nothing yet\n", "rule: []\n"] {
            assert_eq!(
                parse_as(text, "f.yaml", Format::Yaml),
                (Vec::new(), Vec::new())
            );
        }
        assert_eq!(parse("", "f.toml"), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_directory_mixing_toml_and_yaml_loads_both_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let one = |id: &str| {
            format!("rule:\n  - id: {id}\n    name: {id}\n    severity: low\n    sql: SELECT pid FROM processes\n")
        };
        write(dir.path(), "a.toml", "[[rule]]\nid = 'from-toml'\nname = 'x'\nseverity = 'low'\nsql = 'SELECT pid FROM processes'\n");
        write(dir.path(), "b.yaml", &one("from-yaml"));
        write(dir.path(), "c.yml", &one("from-yml"));
        write(dir.path(), "d.yaml.bak", &one("backup"));
        write(dir.path(), "e.txt", &one("text"));
        write(dir.path(), "f.yaml", "rule: [\n");
        let (ok, bad) = load_dir(dir.path());
        let ids: Vec<&str> = ok.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["from-toml", "from-yaml", "from-yml"]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].origin.ends_with("f.yaml"), "{}", bad[0]);
    }

    #[test]
    fn subdirectories_are_read_in_path_order_and_linked_directories_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let one = |id: &str| {
            format!("[[rule]]\nid = '{id}'\nname = 'x'\nseverity = 'low'\nsql = 'SELECT pid FROM processes'\n")
        };
        for sub in ["b/c", "a"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        write(dir.path(), "z.toml", &one("top"));
        write(&dir.path().join("a"), "r.toml", &one("in-a"));
        write(&dir.path().join("b/c"), "r.toml", &one("in-b-c"));
        let other = tempfile::tempdir().unwrap();
        write(other.path(), "r.toml", &one("linked"));
        std::os::unix::fs::symlink(other.path(), dir.path().join("link")).unwrap();
        let (ok, bad) = load_dir(dir.path());
        assert!(bad.is_empty(), "{bad:?}");
        let ids: Vec<&str> = ok.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["in-a", "in-b-c", "top"]);
    }

    #[test]
    fn a_yaml_rule_that_writes_is_refused_like_a_toml_one() {
        let dir = tempfile::tempdir().unwrap();
        let toml = write(
            dir.path(),
            "w.toml",
            "[[rule]]\nid = 'wiper'\nname = 'wipe'\nseverity = 'low'\nsql = 'DELETE FROM processes'\n",
        );
        let yaml = write(
            dir.path(),
            "w.yaml",
            "rule:\n  - id: wiper\n    name: wipe\n    severity: low\n    sql: DELETE FROM processes\n",
        );
        let refusal = |path: &Path| {
            let (ok, bad) = load_file(path);
            assert!(bad.is_empty(), "{bad:?}");
            let engine = crate::engine::RuleEngine::new(ok).unwrap();
            assert!(engine.rules().is_empty());
            let e = engine.refused()[0].clone();
            assert_eq!(e.origin, path.display().to_string());
            assert_eq!(e.rule, "wiper");
            assert_eq!(
                crate::engine::validate(&load_file(path).0[0]),
                Err(e.clone())
            );
            e.reason
        };
        let why = refusal(&yaml);
        assert!(why.contains("writing to processes"), "{why}");
        assert_eq!(why, refusal(&toml));
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

    #[test]
    fn a_rule_file_past_the_cap_is_refused_quickly_toml_and_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let cap = usize::try_from(MAX_RULE_FILE_BYTES).unwrap();
        let rule =
            "[[rule]]\nid = 'a'\nname = 'a'\nseverity = 'low'\nsql = 'SELECT pid FROM processes'\n";
        // Just at the cap: read (a comment pads it).
        let at_cap = format!("{rule}#{}\n", "x".repeat(cap - rule.len() - 2));
        assert_eq!(at_cap.len(), cap);
        let (ok, bad) = load_file(&write(dir.path(), "at.toml", &at_cap));
        assert_eq!((ok.len(), bad.len()), (1, 0), "{bad:?}");
        let over = format!("{at_cap}#");
        for name in ["over.toml", "over.yaml"] {
            let (ok, bad) = load_file(&write(dir.path(), name, &over));
            assert!(ok.is_empty());
            assert!(bad[0].reason.contains("larger than 1024 KiB"), "{}", bad[0]);
        }
        // A rule file that never ends, in a directory as named on purpose.
        #[cfg(unix)]
        {
            let rules = dir.path().join("rules");
            std::fs::create_dir(&rules).unwrap();
            for name in ["zero.toml", "zero.yml"] {
                std::os::unix::fs::symlink("/dev/zero", rules.join(name)).unwrap();
            }
            let started = tokio::time::Instant::now();
            let (ok, bad) = load_dir(&rules);
            let (_, one) = load_file(&rules.join("zero.toml"));
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            assert!(ok.is_empty());
            assert_eq!(bad.len(), 2);
            for e in bad.iter().chain(&one) {
                assert!(e.reason.contains("larger than"), "{e}");
            }
        }
    }
}
