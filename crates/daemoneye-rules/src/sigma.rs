//! Sigma rules, converted at load into the engine's SQL.
//!
//! A YAML rule file whose document has a `detection` key is a
//! [Sigma](https://sigmahq.io/docs/basics/rules.html) rule (a file may hold
//! several, one per YAML document). Each becomes one [`Rule`] whose `sql`
//! is a `SELECT` over the one SQL vocabulary, so it runs as any rule does:
//! read-only, bounded in time and memory, deduplicated, stored and shipped.
//!
//! - `logsource`: `product: linux` (or none) and one of the categories
//!   `process_creation` (over `processes`, every process not yet exited),
//!   `network_connection` (over `connections` joined to their holders) and
//!   `file_event` (over fsmond's `file_events`: files created, written or
//!   renamed into place, joined to their writer).
//!   Any other product, category or a `service` is refused.
//! - Fields: [`FIELDS`] maps each Sigma field name to a column; a field not
//!   in it is refused, named, with the reason.
//! - Values: case-insensitive (ASCII) unless `|cased`, with `*` and `?`
//!   wildcards (`\*`, `\?`, `\\` escape them); a list is any of its values
//!   (all with `|all`); `null` is a missing value.
//! - Modifiers: `contains`, `startswith`, `endswith`, `all`, `cased`, `re`
//!   (with `i`, `m`, `s`; Rust's `regex` syntax, so no look-around or
//!   back-references), `base64`, `base64offset`, `cidr`, `exists`, `lt`,
//!   `lte`, `gt`, `gte`. Any other (`windash`, `wide`, `utf16*`, `expand`,
//!   `fieldref`, ...) is refused by name.
//! - `condition`: selection names, `and`, `or`, `not`, parentheses,
//!   `1 of X*`, `any of X*`, `all of X*`, `1 of them`, `all of them`.
//!   Aggregations (`| count() ...`), `near`, keyword selections (a list of
//!   bare strings) and rule collections (`action:`) are refused.
//! - Metadata: `id` gives the rule id `sigma-<id>` (lowercased; from the
//!   title when there is none), `title` the name, `level` the severity
//!   (`informational` is `info`; `medium` when absent), `tags`
//!   `attack.tNNNN[.NNN]` the ATT&CK ids (the other tags kept, with
//!   `sigma`).

use base64::Engine as _;
use yaml_serde::{Mapping, Value};

use crate::rules::{check_fields, Rule, RuleError, Severity};

/// Where a Sigma field is served from, per category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A text column (the SQL expression naming it).
    Text(&'static str),
    /// An integer column.
    Integer(&'static str),
    /// `User`: a user name (or uid), compared with the uid column given, the
    /// name resolved through `/etc/passwd` when the rule is loaded.
    User(&'static str),
    /// `Initiated`: `true` for an outbound connection.
    Initiated,
    /// Not served, and why.
    Refused(&'static str),
}

/// A Sigma log source category this build serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `process_creation`: one row per process not yet exited.
    ProcessCreation,
    /// `network_connection`: one row per connection seen opening (or present
    /// at the first look), joined to the process holding it.
    NetworkConnection,
    /// `file_event`: a file created, written or renamed into place
    /// (fsmond's `file_events`).
    FileEvent,
}

impl Category {
    fn of(name: &str) -> Option<Self> {
        match name {
            "process_creation" => Some(Self::ProcessCreation),
            "network_connection" => Some(Self::NetworkConnection),
            "file_event" => Some(Self::FileEvent),
            _ => None,
        }
    }

    /// Its Sigma name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ProcessCreation => "process_creation",
            Self::NetworkConnection => "network_connection",
            Self::FileEvent => "file_event",
        }
    }

    /// The `SELECT ... WHERE` every rule of the category starts with; the
    /// condition is `AND`ed to it.
    const fn select(self) -> &'static str {
        match self {
            Self::ProcessCreation => {
                "SELECT p.pid, p.process_key FROM processes p WHERE p.event_type <> 'exit'"
            }
            Self::NetworkConnection => {
                "SELECT p.pid, p.process_key FROM connections c \
                 JOIN processes p ON p.pid = c.pid AND coalesce(p.process_key = c.process_key, 1) \
                 WHERE c.change <> 'closed'"
            }
            // As the built-in file rules: the writer joined by pid and, when
            // both are known, process key (left: an unknown writer still
            // matches, naming its pid), and the path returned, so each file
            // is its own alert.
            Self::FileEvent => {
                "SELECT coalesce(p.pid, f.pid, 0) AS pid, p.process_key, f.path FROM file_events f \
                 LEFT JOIN processes p ON p.pid = f.pid AND coalesce(p.process_key = f.process_key, 1) \
                 WHERE f.operation IN ('create', 'modify', 'close_write', 'rename')"
            }
        }
    }
}

const WINDOWS_ONLY: &str = "a Windows field: Linux has no such fact";
const NO_CWD: &str = "the working directory is not collected";

/// The Sigma fields served, per category, and what each maps to. The
/// README's Sigma section lists the same.
pub const FIELDS: &[(Category, &str, Field)] = {
    use Category::{FileEvent as F, NetworkConnection as N, ProcessCreation as P};
    use Field::{Initiated, Integer, Refused, Text, User};
    &[
        (P, "Image", Text("p.exe")),
        (P, "CommandLine", Text("p.cmdline")),
        (P, "ParentImage", Text("p.parent_exe")),
        (P, "ParentCommandLine", Text("p.parent_cmdline")),
        (P, "ProcessId", Integer("p.pid")),
        (P, "ParentProcessId", Integer("p.ppid")),
        (P, "User", User("p.uid")),
        (P, "LogonId", Integer("p.uid")),
        (P, "CurrentDirectory", Refused(NO_CWD)),
        (P, "OriginalFileName", Refused(WINDOWS_ONLY)),
        (P, "IntegrityLevel", Refused(WINDOWS_ONLY)),
        (P, "Product", Refused(WINDOWS_ONLY)),
        (P, "Company", Refused(WINDOWS_ONLY)),
        (P, "Description", Refused(WINDOWS_ONLY)),
        (N, "Image", Text("p.exe")),
        (N, "CommandLine", Text("p.cmdline")),
        (N, "ParentImage", Text("p.parent_exe")),
        (N, "ProcessId", Integer("c.pid")),
        (N, "User", User("c.uid")),
        (N, "Protocol", Text("c.protocol")),
        (N, "Initiated", Initiated),
        (N, "SourceIp", Text("c.local_address")),
        (N, "SourcePort", Integer("c.local_port")),
        (N, "DestinationIp", Text("c.remote_address")),
        (N, "DestinationPort", Integer("c.remote_port")),
        (
            N,
            "DestinationHostname",
            Refused("host names are not collected, only addresses"),
        ),
        (
            N,
            "SourceHostname",
            Refused("host names are not collected, only addresses"),
        ),
        (F, "TargetFilename", Text("f.path")),
        (F, "Image", Text("p.exe")),
        (F, "CommandLine", Text("p.cmdline")),
        (F, "ProcessId", Integer("f.pid")),
        (F, "User", User("p.uid")),
    ]
};

/// What a field maps to in `category`, or `None` when it is not listed.
pub fn field(category: Category, name: &str) -> Option<Field> {
    FIELDS
        .iter()
        .find(|(c, n, _)| *c == category && *n == name)
        .map(|&(_, _, f)| f)
}

/// The largest number of Sigma documents read from one file.
pub const MAX_DOCUMENTS: usize = 1000;

/// Whether a YAML text holds Sigma rules: its first document is a mapping
/// with a `detection` key.
pub fn is_sigma(text: &str) -> bool {
    use serde::Deserialize as _;
    yaml_serde::Deserializer::from_str(text)
        .next()
        .and_then(|doc| Value::deserialize(doc).ok())
        .is_some_and(|v| v.get("detection").is_some())
}

/// Converts every Sigma rule of one YAML text. Each is returned or refused
/// on its own; a text that is not YAML is refused whole.
pub fn parse(text: &str, origin: &str) -> (Vec<Rule>, Vec<RuleError>) {
    use serde::Deserialize as _;
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        if i == MAX_DOCUMENTS {
            bad.push(refuse(
                origin,
                "-",
                format!("more than {MAX_DOCUMENTS} documents: the rest not read"),
            ));
            break;
        }
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                bad.push(refuse(origin, "-", format!("invalid YAML: {e}")));
                break;
            }
        };
        match convert(&value, origin) {
            Ok(rule) => ok.push(rule),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

fn refuse(origin: &str, rule: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        origin: origin.to_owned(),
        rule: rule.to_owned(),
        reason: reason.into(),
    }
}

/// Converts one Sigma rule (a parsed YAML document).
///
/// # Errors
/// Why it is refused: the first field, modifier, category or construct it
/// uses that this build does not serve, or a malformed rule.
pub fn convert(doc: &Value, origin: &str) -> Result<Rule, RuleError> {
    let Some(map) = doc.as_mapping() else {
        return Err(refuse(origin, "-", "a Sigma rule must be a mapping"));
    };
    let title = str_of(map, "title").unwrap_or_default();
    let id = rule_id(map, title);
    let no = |reason: String| refuse(origin, &id, reason);
    if title.trim().is_empty() {
        return Err(no("no `title`".to_owned()));
    }
    if map.contains_key("action") {
        return Err(no(
            "rule collections (`action:`) are not served: one rule per document".to_owned(),
        ));
    }
    let category = logsource(map).map_err(no)?;
    let detection = map
        .get("detection")
        .and_then(Value::as_mapping)
        .ok_or_else(|| no("`detection` must be a mapping".to_owned()))?;
    let condition = detection_sql(category, detection).map_err(no)?;
    let (mitre, mut tags) = tags_of(map);
    tags.insert(0, "sigma".to_owned());
    let rule = Rule {
        id: id.clone(),
        name: title.trim().to_owned(),
        description: str_of(map, "description")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        severity: severity(map).map_err(no)?,
        sql: format!("{} AND ({condition})", category.select()),
        tags,
        mitre,
        origin: origin.to_owned(),
    };
    check_fields(&rule)?;
    Ok(rule)
}

fn str_of<'a>(map: &'a Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// `sigma-<id>` (the id lowercased, only `[a-z0-9-]` kept), or from the
/// title when the rule has no id.
fn rule_id(map: &Mapping, title: &str) -> String {
    let from = str_of(map, "id").unwrap_or(title);
    let mut id = String::from("sigma");
    let mut dash = true;
    for c in from.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if dash {
                id.push('-');
            }
            id.push(c);
            dash = false;
        } else {
            dash = true;
        }
    }
    id
}

fn severity(map: &Mapping) -> Result<Severity, String> {
    Ok(match str_of(map, "level") {
        None | Some("medium") => Severity::Medium,
        Some("informational") => Severity::Info,
        Some("low") => Severity::Low,
        Some("high") => Severity::High,
        Some("critical") => Severity::Critical,
        Some(other) => return Err(format!("level {other:?} is not a Sigma level")),
    })
}

/// The ATT&CK ids of `attack.tNNNN[.NNN]` tags, and the other tags.
fn tags_of(map: &Mapping) -> (Vec<String>, Vec<String>) {
    let (mut mitre, mut tags) = (Vec::new(), Vec::new());
    let list = map.get("tags").and_then(Value::as_sequence);
    for tag in list.into_iter().flatten().filter_map(Value::as_str) {
        match tag.strip_prefix("attack.t") {
            Some(t) if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
                mitre.push(format!("T{t}"));
            }
            _ => tags.push(tag.to_owned()),
        }
    }
    (mitre, tags)
}

fn logsource(map: &Mapping) -> Result<Category, String> {
    let Some(source) = map.get("logsource").and_then(Value::as_mapping) else {
        return Err("`logsource` must be a mapping".to_owned());
    };
    if let Some(product) = str_of(source, "product") {
        if product != "linux" {
            return Err(format!(
                "logsource product {product:?} is not served (only linux)"
            ));
        }
    }
    if let Some(service) = str_of(source, "service") {
        return Err(format!(
            "logsource service {service:?} is not served (categories only)"
        ));
    }
    let Some(name) = str_of(source, "category") else {
        return Err("logsource has no category".to_owned());
    };
    Category::of(name).ok_or_else(|| {
        format!(
            "logsource category {name:?} is not served \
             (process_creation, network_connection, file_event)"
        )
    })
}

/// The SQL of a whole `detection`: its condition over its selections.
fn detection_sql(category: Category, detection: &Mapping) -> Result<String, String> {
    let mut selections = Vec::new();
    for (name, body) in detection {
        let Some(name) = name.as_str() else {
            return Err("a selection's name must be a string".to_owned());
        };
        if name == "condition" || name == "timeframe" {
            continue;
        }
        let sql = selection_sql(category, body)
            .map_err(|reason| format!("selection {name}: {reason}"))?;
        selections.push((name.to_owned(), sql));
    }
    if detection.contains_key("timeframe") {
        return Err("`timeframe` (a correlation) is not served".to_owned());
    }
    let conditions: Vec<&str> = match detection.get("condition") {
        Some(Value::String(c)) => vec![c.as_str()],
        Some(Value::Sequence(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => return Err("`condition` must be a string".to_owned()),
    };
    if conditions.is_empty() {
        return Err("`condition` is empty".to_owned());
    }
    let mut parts = Vec::with_capacity(conditions.len());
    for c in conditions {
        parts.push(condition::compile(c, &selections)?);
    }
    Ok(parts.join(" OR "))
}

/// A selection: a mapping (every field matches) or a list of mappings (any
/// of them).
fn selection_sql(category: Category, body: &Value) -> Result<String, String> {
    match body {
        Value::Mapping(map) => mapping_sql(category, map),
        Value::Sequence(list) if list.iter().all(Value::is_mapping) && !list.is_empty() => {
            let mut any = Vec::with_capacity(list.len());
            for m in list.iter().filter_map(Value::as_mapping) {
                any.push(mapping_sql(category, m)?);
            }
            Ok(join("OR", any))
        }
        Value::Sequence(_) | Value::String(_) => {
            Err("keyword selections (values without a field) are not served".to_owned())
        }
        _ => Err("must be a mapping of fields or a list of them".to_owned()),
    }
}

fn mapping_sql(category: Category, map: &Mapping) -> Result<String, String> {
    if map.is_empty() {
        return Err("an empty selection".to_owned());
    }
    let mut all = Vec::with_capacity(map.len());
    for (key, values) in map {
        let Some(key) = key.as_str() else {
            return Err("a field name must be a string".to_owned());
        };
        all.push(field_sql(category, key, values)?);
    }
    Ok(join("AND", all))
}

fn join(op: &str, parts: Vec<String>) -> String {
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", parts.join(&format!(" {op} ")))
    }
}

/// How a value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
    Re,
    Cidr,
    Exists,
    Compare(&'static str),
}

/// A base64 transformation of the value before it is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base64 {
    Plain,
    Offsets,
}

#[derive(Debug)]
struct Modifiers {
    op: Op,
    all: bool,
    cased: bool,
    base64: Option<Base64>,
    re_flags: String,
}

fn modifiers(names: &[&str]) -> Result<Modifiers, String> {
    let mut m = Modifiers {
        op: Op::Equals,
        all: false,
        cased: false,
        base64: None,
        re_flags: String::new(),
    };
    let set_op = |m: &mut Modifiers, op: Op, name: &str| {
        if m.op == Op::Equals {
            m.op = op;
            Ok(())
        } else {
            Err(format!(
                "modifier `{name}` combined with another comparison"
            ))
        }
    };
    for &name in names {
        match name {
            "contains" => set_op(&mut m, Op::Contains, name)?,
            "startswith" => set_op(&mut m, Op::StartsWith, name)?,
            "endswith" => set_op(&mut m, Op::EndsWith, name)?,
            "re" => set_op(&mut m, Op::Re, name)?,
            "cidr" => set_op(&mut m, Op::Cidr, name)?,
            "exists" => set_op(&mut m, Op::Exists, name)?,
            "lt" => set_op(&mut m, Op::Compare("<"), name)?,
            "lte" => set_op(&mut m, Op::Compare("<="), name)?,
            "gt" => set_op(&mut m, Op::Compare(">"), name)?,
            "gte" => set_op(&mut m, Op::Compare(">="), name)?,
            "i" | "m" | "s" if m.op == Op::Re => m.re_flags.push_str(name),
            "all" => m.all = true,
            "cased" => m.cased = true,
            "base64" if m.base64.is_none() => m.base64 = Some(Base64::Plain),
            "base64offset" if m.base64.is_none() => m.base64 = Some(Base64::Offsets),
            other => return Err(format!("modifier `{other}` is not served")),
        }
    }
    if m.base64 == Some(Base64::Offsets) && m.op != Op::Contains {
        return Err("modifier `base64offset` goes with `contains`".to_owned());
    }
    if m.base64.is_some() && matches!(m.op, Op::Re | Op::Cidr | Op::Exists | Op::Compare(_)) {
        return Err("modifier `base64` goes with a string comparison".to_owned());
    }
    Ok(m)
}

/// One `Field|modifiers: value(s)` entry.
fn field_sql(category: Category, key: &str, values: &Value) -> Result<String, String> {
    let mut parts = key.split('|');
    let name = parts.next().unwrap_or_default();
    let names: Vec<&str> = parts.collect();
    let field = field(category, name).ok_or_else(|| {
        format!(
            "field `{name}` is not served in {} (see the README's Sigma fields)",
            category.name()
        )
    })?;
    if let Field::Refused(why) = field {
        return Err(format!("field `{name}` is not served: {why}"));
    }
    let m = modifiers(&names).map_err(|e| format!("field `{name}`: {e}"))?;
    let list: Vec<&Value> = match values {
        Value::Sequence(list) if list.is_empty() => {
            return Err(format!("field `{name}`: an empty list of values"))
        }
        Value::Sequence(list) => list.iter().collect(),
        other => vec![other],
    };
    if let Some(sql) = any_of_text(field, &m, &list) {
        return sql.map_err(|e| format!("field `{name}`: {e}"));
    }
    let mut each = Vec::new();
    for v in list {
        each.extend(value_sql(field, &m, v).map_err(|e| format!("field `{name}`: {e}"))?);
    }
    Ok(join(if m.all { "AND" } else { "OR" }, each))
}

/// The most values of one field compared one by one (see [`any_of_text`]);
/// past it one automaton matches them all (a `REGEXP` call costs some five
/// `NOCASE` comparisons).
const MAX_COMPARED: usize = 4;

/// A case-insensitive match of a text field against any of its values, or
/// `None` where the values need the general path (`all`, `cased`, base64,
/// an empty or `null` value, another comparison). What is cheapest per row
/// (`daemoneye-bench rules --rules-dir`, over the Linux rules of `SigmaHQ`):
/// - more than [`MAX_COMPARED`] values: one `REGEXP` of them all;
/// - a value without wildcards, compared whole or at an end: that part of
///   the column under SQLite's ASCII `NOCASE` collation, which lowers
///   nothing (`substr(p.exe, -6) = '/xmrig' COLLATE NOCASE`, some 50 ns);
/// - the other values (`contains`, wildcards), two or more: one `REGEXP`
///   (`(?si)`, wildcards as `.*` and `.`, anchored as compared), one pass of
///   one automaton per row, where lowering the column for each `LIKE` cost
///   several times more for the dozens of values Sigma rules list;
/// - one such value alone: `lower(column) LIKE`.
fn any_of_text(field: Field, m: &Modifiers, values: &[&Value]) -> Option<Result<String, String>> {
    let Field::Text(column) = field else {
        return None;
    };
    let (head, tail) = match m.op {
        Op::Equals => ("^", "$"),
        Op::Contains => ("", ""),
        Op::StartsWith => ("^", ""),
        Op::EndsWith => ("", "$"),
        _ => return None,
    };
    if m.all || m.cased || m.base64.is_some() {
        return None;
    }
    let mut texts = Vec::with_capacity(values.len());
    for v in values {
        texts.push(match v {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        });
    }
    let (mut any, mut scanned) = (Vec::new(), Vec::new());
    if texts.len() > MAX_COMPARED {
        let alternatives: Vec<String> = texts
            .iter()
            .map(|text| format!("{head}{}{tail}", sigma_regex(text)))
            .collect();
        return Some(regex_sql(
            column,
            "si",
            &format!("(?:{})", alternatives.join("|")),
        ));
    }
    for text in texts {
        let pattern = Pattern::sigma(&text);
        let whole = unescape_like(&pattern.like);
        let n = whole.chars().count();
        let part = match m.op {
            _ if pattern.wild => None,
            Op::Equals => Some(column.to_owned()),
            Op::StartsWith => Some(format!("substr({column}, 1, {n})")),
            Op::EndsWith => Some(format!("substr({column}, -{n})")),
            _ => None,
        };
        match part {
            Some(part) => any.push(format!("{part} = {} COLLATE NOCASE", quote(&whole))),
            None => scanned.push((text, pattern)),
        }
    }
    match scanned.len() {
        0 => {}
        1 => {
            let (_, pattern) = scanned.remove(0);
            any.push(pattern.sql(column, m.op, false));
        }
        _ => {
            let alternatives: Vec<String> = scanned
                .iter()
                .map(|(text, _)| format!("{head}{}{tail}", sigma_regex(text)))
                .collect();
            let re = format!("(?:{})", alternatives.join("|"));
            any.push(match regex_sql(column, "si", &re) {
                Ok(sql) => sql,
                Err(e) => return Some(Err(e)),
            });
        }
    }
    Some(Ok(join("OR", any)))
}

/// One piece of a Sigma string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// A character that stands for itself.
    Char(char),
    /// `*`: any run of characters.
    AnyRun,
    /// `?`: any one character.
    AnyOne,
}

/// The pieces of a Sigma string: `*` any run, `?` any one character;
/// `\*`, `\?` and `\\` stand for themselves, and so does any other `\`.
fn pieces(s: &str) -> impl Iterator<Item = Piece> + '_ {
    let mut chars = s.chars().peekable();
    std::iter::from_fn(move || {
        Some(match chars.next()? {
            '\\' => match chars.peek() {
                Some(&n @ ('*' | '?' | '\\')) => {
                    chars.next();
                    Piece::Char(n)
                }
                _ => Piece::Char('\\'),
            },
            '*' => Piece::AnyRun,
            '?' => Piece::AnyOne,
            c => Piece::Char(c),
        })
    })
}

/// A Sigma string ([`pieces`]) as a regular expression.
fn sigma_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for piece in pieces(s) {
        match piece {
            Piece::Char(c) => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
            }
            Piece::AnyRun => out.push_str(".*"),
            Piece::AnyOne => out.push('.'),
        }
    }
    out
}

/// The SQL of one value (several for `base64offset`, any of which matches).
fn value_sql(field: Field, m: &Modifiers, value: &Value) -> Result<Vec<String>, String> {
    if m.op == Op::Exists {
        let Value::Bool(exists) = value else {
            return Err("`exists` takes true or false".to_owned());
        };
        let column = match field {
            Field::Text(c) | Field::Integer(c) | Field::User(c) => c,
            Field::Initiated => "c.direction",
            Field::Refused(_) => return Err("not served".to_owned()),
        };
        let not = if *exists { " NOT" } else { "" };
        return Ok(vec![format!("{column} IS{not} NULL")]);
    }
    match field {
        Field::Refused(why) => Err(why.to_owned()),
        Field::Initiated => {
            let outbound = match value {
                Value::Bool(b) => *b,
                Value::String(s) if s.eq_ignore_ascii_case("true") => true,
                Value::String(s) if s.eq_ignore_ascii_case("false") => false,
                _ => return Err("`Initiated` takes true or false".to_owned()),
            };
            if m.op != Op::Equals {
                return Err("`Initiated` takes no modifier".to_owned());
            }
            let op = if outbound { "=" } else { "<>" };
            Ok(vec![format!("c.direction {op} 'outbound'")])
        }
        Field::User(column) => {
            if m.op != Op::Equals || m.base64.is_some() {
                return Err("`User` takes a user name or uid, without modifiers".to_owned());
            }
            let uid = match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok().or_else(|| uid_of(s)),
                _ => None,
            };
            match uid {
                Some(uid) => Ok(vec![format!("{column} = {uid}")]),
                None => Err(format!("user {value:?} is not in /etc/passwd")),
            }
        }
        Field::Integer(column) => integer_sql(column, m, value),
        Field::Text(column) => text_sql(column, m, value),
    }
}

fn integer_sql(column: &str, m: &Modifiers, value: &Value) -> Result<Vec<String>, String> {
    let n = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        Value::Null => return Ok(vec![format!("{column} IS NULL")]),
        _ => None,
    };
    match (m.op, n) {
        (Op::Equals, Some(n)) if m.base64.is_none() => Ok(vec![format!("{column} = {n}")]),
        (Op::Compare(op), Some(n)) => Ok(vec![format!("{column} {op} {n}")]),
        (Op::Compare(_), None) => Err("a comparison takes a number".to_owned()),
        // Anything else compares the number's text.
        _ => text_sql(&format!("CAST({column} AS TEXT)"), m, value),
    }
}

fn text_sql(column: &str, m: &Modifiers, value: &Value) -> Result<Vec<String>, String> {
    let text = match value {
        Value::Null => return Ok(vec![format!("{column} IS NULL")]),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err("a value must be a string, a number or null".to_owned()),
    };
    match m.op {
        Op::Compare(_) => return Err("`lt`, `lte`, `gt`, `gte` take a numeric field".to_owned()),
        Op::Re => return regex_sql(column, &m.re_flags, &text).map(|s| vec![s]),
        Op::Cidr => return cidr_sql(column, &text).map(|s| vec![s]),
        _ => {}
    }
    if text.is_empty() && m.op == Op::Equals {
        return Ok(vec![format!("coalesce({column}, '') = ''")]);
    }
    let (patterns, cased) = match m.base64 {
        // Base64 is compared as it is: its case is its content.
        Some(Base64::Plain) => (vec![Pattern::literal(&b64(text.as_bytes()))], true),
        Some(Base64::Offsets) => (
            b64_offsets(text.as_bytes())
                .iter()
                .map(|s| Pattern::literal(s))
                .collect(),
            true,
        ),
        None => (vec![Pattern::sigma(&text)], m.cased),
    };
    Ok(patterns
        .into_iter()
        .map(|p| p.sql(column, m.op, cased))
        .collect())
}

/// A Sigma string as a SQL `LIKE` pattern (`\` its escape).
#[derive(Debug)]
struct Pattern {
    like: String,
    wild: bool,
}

impl Pattern {
    /// A string with no wildcards.
    fn literal(s: &str) -> Self {
        let mut like = String::with_capacity(s.len());
        for c in s.chars() {
            push_literal(&mut like, c);
        }
        Self { like, wild: false }
    }

    /// A Sigma string ([`pieces`]).
    fn sigma(s: &str) -> Self {
        let (mut like, mut wild) = (String::with_capacity(s.len()), false);
        for piece in pieces(s) {
            match piece {
                Piece::Char(c) => push_literal(&mut like, c),
                Piece::AnyRun => like.push('%'),
                Piece::AnyOne => like.push('_'),
            }
            wild |= !matches!(piece, Piece::Char(_));
        }
        Self { like, wild }
    }

    /// The comparison of `column` with this pattern under `op`. The rule
    /// connections' `LIKE` is case-sensitive (`case_sensitive_like`), so a
    /// case-insensitive match lowers both sides (ASCII, as SQLite's
    /// `lower`).
    fn sql(self, column: &str, op: Op, cased: bool) -> String {
        let (like, wild) = match op {
            Op::Contains => (format!("%{}%", self.like), true),
            Op::StartsWith => (format!("{}%", self.like), true),
            Op::EndsWith => (format!("%{}", self.like), true),
            _ => (self.like, self.wild),
        };
        let (column, like) = if cased {
            (column.to_owned(), like)
        } else {
            (format!("lower({column})"), like.to_ascii_lowercase())
        };
        if wild {
            format!("{column} LIKE {} ESCAPE '\\'", quote(&like))
        } else {
            // No wildcard: the escapes are only `\\`, `\%` and `\_`.
            format!("{column} = {}", quote(&unescape_like(&like)))
        }
    }
}

fn push_literal(like: &mut String, c: char) {
    if matches!(c, '%' | '_' | '\\') {
        like.push('\\');
    }
    like.push(c);
}

fn unescape_like(like: &str) -> String {
    let mut out = String::with_capacity(like.len());
    let mut chars = like.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The three texts `bytes` can appear as inside a longer base64 text,
/// whatever its offset there: the encodings of `bytes` after 0, 1 and 2
/// other bytes, less the characters those bytes (and the padding) touch.
fn b64_offsets(bytes: &[u8]) -> Vec<String> {
    const FROM: [usize; 3] = [0, 2, 3];
    const CUT: [usize; 3] = [0, 3, 2];
    let mut out = Vec::with_capacity(3);
    for shift in 0..3 {
        let mut shifted = vec![b' '; shift];
        shifted.extend_from_slice(bytes);
        let encoded = b64(&shifted);
        let end = encoded.len() - CUT[(bytes.len() + shift) % 3];
        if let Some(s) = encoded.get(FROM[shift]..end) {
            if !s.is_empty() {
                out.push(s.to_owned());
            }
        }
    }
    out
}

fn regex_sql(column: &str, flags: &str, pattern: &str) -> Result<String, String> {
    let pattern = if flags.is_empty() {
        pattern.to_owned()
    } else {
        format!("(?{flags}){pattern}")
    };
    regex::RegexBuilder::new(&pattern)
        .size_limit(daemoneye_store::readonly::MAX_REGEX_BYTES)
        .build()
        .map_err(|e| format!("`re` {pattern:?}: {e}"))?;
    Ok(format!("{column} REGEXP {}", quote(&pattern)))
}

fn cidr_sql(column: &str, net: &str) -> Result<String, String> {
    daemoneye_store::readonly::parse_cidr(net).map_err(|e| format!("`cidr` {net:?}: {e}"))?;
    Ok(format!("cidr_match({column}, {})", quote(net)))
}

/// The uid of `name` in `/etc/passwd`.
fn uid_of(name: &str) -> Option<u64> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The `condition` language: names, `and`, `or`, `not`, parentheses and
/// `1 of` / `all of` over name patterns.
mod condition {
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Token {
        Open,
        Close,
        Word(String),
    }

    fn tokens(text: &str) -> Result<Vec<Token>, String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut Vec<Token>| {
            if !word.is_empty() {
                out.push(Token::Word(std::mem::take(word)));
            }
        };
        for c in text.chars() {
            match c {
                '(' | ')' => {
                    flush(&mut word, &mut out);
                    out.push(if c == '(' { Token::Open } else { Token::Close });
                }
                '|' => return Err("aggregations (`| count() ...`) are not served".to_owned()),
                c if c.is_whitespace() => flush(&mut word, &mut out),
                c if c.is_alphanumeric() || matches!(c, '_' | '*' | '-' | '.') => word.push(c),
                c => return Err(format!("condition: unexpected {c:?}")),
            }
        }
        flush(&mut word, &mut out);
        Ok(out)
    }

    struct Parser<'a> {
        tokens: Vec<Token>,
        at: usize,
        selections: &'a [(String, String)],
    }

    /// The SQL of `condition` over the named selections' SQL.
    pub(super) fn compile(
        condition: &str,
        selections: &[(String, String)],
    ) -> Result<String, String> {
        let mut p = Parser {
            tokens: tokens(condition)?,
            at: 0,
            selections,
        };
        let sql = p.or()?;
        match p.tokens.get(p.at) {
            None => Ok(sql),
            Some(t) => Err(format!("condition: unexpected {t:?}")),
        }
    }

    impl Parser<'_> {
        fn peek_word(&self, w: &str) -> bool {
            matches!(self.tokens.get(self.at), Some(Token::Word(x)) if x.eq_ignore_ascii_case(w))
        }

        fn or(&mut self) -> Result<String, String> {
            self.chain("or", Self::and)
        }

        fn and(&mut self) -> Result<String, String> {
            self.chain("and", Self::not)
        }

        /// `next (word next)*`, joined by `word` (`and` binds tighter than
        /// `or`: `or` chains `and`s).
        fn chain(
            &mut self,
            word: &str,
            next: fn(&mut Self) -> Result<String, String>,
        ) -> Result<String, String> {
            let mut parts = vec![next(self)?];
            while self.peek_word(word) {
                self.at += 1;
                parts.push(next(self)?);
            }
            Ok(super::join(&word.to_ascii_uppercase(), parts))
        }

        fn not(&mut self) -> Result<String, String> {
            if self.peek_word("not") {
                self.at += 1;
                // A field that is missing (NULL) matches nothing, so `not`
                // of it holds: `IS NOT TRUE`, where SQL's `NOT NULL` is
                // NULL. (Wrapping every selection in `coalesce` instead
                // made SQLite evaluate each whole, without short cuts:
                // seven times slower on SigmaHQ's rules.)
                return Ok(format!("({}) IS NOT TRUE", self.not()?));
            }
            self.atom()
        }

        fn atom(&mut self) -> Result<String, String> {
            let token = self.tokens.get(self.at).cloned();
            self.at += 1;
            match token {
                Some(Token::Open) => {
                    let inner = self.or()?;
                    match self.tokens.get(self.at) {
                        Some(Token::Close) => {
                            self.at += 1;
                            Ok(format!("({inner})"))
                        }
                        _ => Err("condition: `(` without its `)`".to_owned()),
                    }
                }
                Some(Token::Word(w)) if self.peek_word("of") => {
                    self.at += 1;
                    let all = match w.to_ascii_lowercase().as_str() {
                        "1" | "any" => false,
                        "all" => true,
                        _ => return Err(format!("condition: `{w} of` (only 1, any, all)")),
                    };
                    let Some(Token::Word(pattern)) = self.tokens.get(self.at).cloned() else {
                        return Err("condition: `of` without a name pattern".to_owned());
                    };
                    self.at += 1;
                    self.of(all, &pattern)
                }
                Some(Token::Word(w)) if w.eq_ignore_ascii_case("near") => {
                    Err("`near` is not served".to_owned())
                }
                Some(Token::Word(w)) => self
                    .selections
                    .iter()
                    .find(|(name, _)| *name == w)
                    .map(|(_, sql)| sql.clone())
                    .ok_or_else(|| format!("condition names {w:?}, which is not a selection")),
                Some(Token::Close) => Err("condition: unexpected `)`".to_owned()),
                None => Err("condition: ends too soon".to_owned()),
            }
        }

        fn of(&self, all: bool, pattern: &str) -> Result<String, String> {
            let them = pattern.eq_ignore_ascii_case("them");
            let chosen: Vec<String> = self
                .selections
                .iter()
                .filter(|(name, _)| {
                    if them {
                        !name.starts_with('_')
                    } else {
                        matches_glob(pattern, name)
                    }
                })
                .map(|(_, sql)| sql.clone())
                .collect();
            if chosen.is_empty() {
                return Err(format!("condition: no selection matches {pattern:?}"));
            }
            let op = if all { " AND " } else { " OR " };
            Ok(format!("({})", chosen.join(op)))
        }
    }

    /// Whether `name` matches `pattern`, whose `*` is any run.
    fn matches_glob(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, rest)) => {
                let Some(tail) = name.strip_prefix(head) else {
                    return false;
                };
                if rest.is_empty() {
                    return true;
                }
                (0..=tail.len())
                    .filter(|&i| tail.is_char_boundary(i))
                    .any(|i| matches_glob(rest, &tail[i..]))
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn and_binds_tighter_than_or_and_not_tightest() {
            let sel: Vec<(String, String)> = ["a", "b", "c"]
                .iter()
                .map(|n| ((*n).to_owned(), n.to_uppercase()))
                .collect();
            assert_eq!(
                compile("a or b and not c", &sel).as_deref(),
                Ok("(A OR (B AND (C) IS NOT TRUE))")
            );
            assert_eq!(
                compile("(a or b) and c", &sel).as_deref(),
                Ok("(((A OR B)) AND C)")
            );
            assert_eq!(
                compile("all of them", &sel).as_deref(),
                Ok("(A AND B AND C)")
            );
            assert!(compile("a or", &sel).is_err());
            assert!(compile("a b", &sel).is_err());
            assert!(compile("(a", &sel).is_err());
            assert!(compile("d", &sel).is_err());
        }

        #[test]
        fn globs_match_names() {
            assert!(matches_glob("sel*", "selection_a"));
            assert!(matches_glob("*_a", "selection_a"));
            assert!(!matches_glob("sel*", "filter"));
            assert!(matches_glob("filter", "filter"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_stand_for_themselves_in_like_and_regex() {
        let p = Pattern::sigma(r"50%_a\*b*c?\\d\x");
        assert_eq!(p.like, r"50\%\_a*b%c_\\d\\x");
        assert!(p.wild);
        assert!(!Pattern::sigma(r"a\*b\?").wild);
        assert_eq!(sigma_regex(r"a.\*b*c?"), r"a\.\*b.*c.");
        assert_eq!(unescape_like(&Pattern::sigma(r"50%_\*").like), "50%_*");
    }
}
