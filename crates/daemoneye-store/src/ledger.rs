//! The audit ledger: an append-only table whose every entry holds the
//! BLAKE3 hash of its content and of the entry before it.
//!
//! Editing, deleting or reordering a stored entry breaks the chain, and
//! [`verify`] names the first bad entry. Cutting entries off the *end*, or
//! rebuilding the whole chain (it is unkeyed: whoever can write the file can
//! recompute every hash), leaves a valid chain. What catches those is a head
//! kept off the host: a [`Checkpoint`] (an entry of kind `checkpoint` whose
//! own sequence number and hash the agent sends to every sink), later given
//! back as an [`Anchor`] to [`verify_anchors`], which fails when the chain no
//! longer reaches the anchor's sequence number ([`LedgerError::TailCut`]) or
//! holds another hash there ([`LedgerError::HeadDiffers`]).
//!
//! Rows vouch for themselves in batches: the lifecycle events a
//! transaction stores from its writes in a row (the writer's batch of the
//! agent's batches) share one entry of kind [`EVENTS_KIND`] ([`EventsEntry`]: their
//! ids and a BLAKE3 digest of every column of every row, [`rows_digest`]),
//! so a short-lived process costs the ledger a few bytes instead of three
//! JSON copies of its events; [`verify_rows`] hashes the rows again and
//! names the entry whose rows were edited, inserted or deleted. Alerts keep
//! one entry each, holding the alert. Entries of kind `process_event` (one
//! event's JSON copy each) are what stores before schema 6 wrote; they are
//! still checked field by field.
//!
//! A bounded store prunes its oldest data below a kept checkpoint: the
//! entries before that checkpoint go with their rows, and a `prune` entry
//! ([`PruneEntry`]) appended after it says where the chain was cut and what
//! went. [`verify`] then starts from that checkpoint (its own hash is
//! checked, as is every link after it) and fails when the chain starts
//! anywhere the newest `prune` entry does not name: entries deleted from
//! the start of the chain without a recorded prune are caught.
//!
//! The agent also appends a `start` entry ([`StartEntry`]) when it starts and
//! a `stop` entry when it stops cleanly: a `start` that follows another
//! `start` means the run before it ended uncleanly ([`runs`]).

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

/// The table, created by [`create`].
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    content TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
)";

/// The `prev_hash` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Ledger failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The chain is broken at this entry.
    #[error("ledger entry {seq} is bad: {reason}")]
    Broken {
        /// The first bad entry's sequence number.
        seq: i64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The chain is shorter than an anchor says it was: its tail was cut
    /// (or the whole ledger deleted).
    #[error("chain ends at seq {entries}, anchor at {anchor}: entries were cut off its end")]
    TailCut {
        /// The last entry's sequence number (0: no entry).
        entries: i64,
        /// The anchor's sequence number.
        anchor: i64,
    },
    /// The entry at an anchor's sequence number has another hash: the chain
    /// was rewritten up to it (and rebuilt).
    #[error("entry {seq}'s hash differs from the anchor's: the chain was rewritten")]
    HeadDiffers {
        /// The anchor's sequence number.
        seq: i64,
    },
    /// SQLite failed.
    #[error("ledger database error")]
    Sqlite(#[from] rusqlite::Error),
}

/// Why an anchor could not be read (bad input, never a verdict).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// Not `SEQ:HEX` with a positive sequence number and a 64-digit hex
    /// hash, nor a checkpoint's JSON line.
    #[error("{text:?} is not an anchor: {reason} (expected SEQ:HEX, as `ledger verify` prints it, or a checkpoint's JSON line)")]
    Malformed {
        /// What was given (cut at 80 characters).
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A line of an anchor file is not JSON.
    #[error("line {line}: not a JSON line ({reason})")]
    Line {
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An anchor file holds no checkpoint.
    #[error("no checkpoint line in it (a file sink writes one at every agent start, stop and checkpoint_interval)")]
    NoCheckpoint,
}

/// The kind of the entry that vouches for one batch of `process_events`
/// rows ([`EventsEntry`]).
pub const EVENTS_KIND: &str = "process_events";

/// The content of an [`EVENTS_KIND`] entry: the rows `first..=last` of
/// `process_events` (ids are never reused), each naming this entry in its
/// `ledger_seq`, and the [`rows_digest`] of them as they were written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsEntry {
    /// The first row's id.
    pub first: i64,
    /// The last row's id.
    pub last: i64,
    /// The BLAKE3 digest of the rows, lowercase hex.
    pub digest: String,
    /// How many of [`EVENT_COLUMNS`] the digest covers: all of them from
    /// schema 12 on ([`EVENT_COLUMN_COUNT`]), the first 27 in the entries
    /// written before (which do not name it).
    #[serde(default = "EventsEntry::columns_before_schema_12")]
    pub columns: usize,
}

impl EventsEntry {
    /// The columns of schema 6 to 11.
    const fn columns_before_schema_12() -> usize {
        27
    }
}

/// The columns of a `process_events` row that [`rows_digest`] hashes, in
/// this order: every column of schema 12 (the first 27 are schema 6's). A
/// later schema that adds a column leaves it out of the digests of the rows
/// written before it ([`EventsEntry::columns`] says how many an entry's
/// digest covers).
pub const EVENT_COLUMNS: &str = "id, event_type, process_key, pid, ppid, name, exe, argv, uid, \
    start_time, cpu_percent, rss_bytes, exe_hash, hash_algorithm, accessible, file_exists, \
    exit_code, metadata, observed_at, ledger_seq, euid, gid, exe_replaced, container_id, cgroup, \
    detail, event_id, forked_at, fork_event_id, exited_at, exit_event_id";

/// The number of [`EVENT_COLUMNS`]: what an entry written now covers.
pub const EVENT_COLUMN_COUNT: usize = 31;

/// How many rows of `process_events` have ids `first..=last`, and the
/// BLAKE3 digest of the first `columns` of their [`EVENT_COLUMNS`] in id
/// order: each value with
/// its SQLite type and, for text and blobs, its length, so no two
/// different rows hash alike. The store computes it as it writes the rows
/// (in the same transaction), [`verify_rows`] again from what is stored.
///
/// # Errors
/// SQLite errors.
pub fn rows_digest(
    conn: &Connection,
    first: i64,
    last: i64,
    columns: usize,
) -> Result<(i64, String), LedgerError> {
    // Only the columns hashed: a store not yet migrated has no others.
    let columns = columns.min(EVENT_COLUMN_COUNT);
    let list = EVENT_COLUMNS
        .split(',')
        .take(columns)
        .collect::<Vec<_>>()
        .join(",");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {list} FROM process_events WHERE id BETWEEN ?1 AND ?2 ORDER BY id"
    ))?;
    let mut rows = stmt.query([first, last])?;
    let mut h = RowsHasher::default();
    while let Some(r) = rows.next()? {
        for i in 0..columns {
            h.value(r.get_ref(i)?);
        }
        h.row_done();
    }
    Ok(h.finish())
}

/// [`rows_digest`] fed one value at a time: what the store hashes as it
/// writes rows (from the values it binds), so that it need not read them
/// back; [`verify_rows`] reads them.
#[derive(Debug, Default)]
pub struct RowsHasher {
    h: blake3::Hasher,
    /// What is yet to be hashed: blake3 takes many small updates slowly
    /// (each is copied into its block buffer) and a long one fast (whole
    /// chunks at once, in SIMD lanes), so values are gathered here first.
    buf: Vec<u8>,
    rows: i64,
}

impl RowsHasher {
    /// Bytes gathered before they are hashed.
    const BUFFER: usize = 16 * 1024;

    /// The next column's value. A NaN real is hashed as null: SQLite
    /// stores it so.
    pub fn value(&mut self, v: rusqlite::types::ValueRef<'_>) {
        use rusqlite::types::ValueRef;
        let buf = &mut self.buf;
        match v {
            ValueRef::Null => buf.push(0),
            ValueRef::Real(v) if v.is_nan() => buf.push(0),
            ValueRef::Integer(v) => {
                buf.push(1);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            ValueRef::Real(v) => {
                buf.push(2);
                buf.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            ValueRef::Text(t) => {
                buf.push(3);
                buf.extend_from_slice(&(t.len() as u64).to_le_bytes());
                buf.extend_from_slice(t);
            }
            ValueRef::Blob(b) => {
                buf.push(4);
                buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
                buf.extend_from_slice(b);
            }
        }
        if self.buf.len() >= Self::BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.h.update(&self.buf);
        self.buf.clear();
    }

    /// A row's last column was given.
    pub fn row_done(&mut self) {
        self.rows += 1;
    }

    /// The rows hashed and their digest (hex).
    #[must_use]
    pub fn finish(&mut self) -> (i64, String) {
        self.flush();
        (self.rows, self.h.finalize().to_hex().to_string())
    }
}

/// The head of the chain at one entry: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Head {
    /// The entry's sequence number (0 and the genesis hash: no entry).
    pub seq: i64,
    /// The entry's hash, lowercase hex.
    pub hash: String,
}

impl std::fmt::Display for Head {
    /// `SEQ:HEX`, the form [`Anchor`] parses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// What the store lost since the previous checkpoint (or since it was
/// opened, for the first): counted by its writer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lost {
    /// Writes lost (event batches, alerts, snapshots, other writes).
    pub writes: u64,
    /// Events lost (failed writes, a full queue).
    pub events: u64,
    /// `gap` entries recorded in the chain for them.
    pub gaps: u64,
}

impl Lost {
    /// Whether nothing was lost.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// The content of a `checkpoint` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointEntry {
    /// When it was taken, unix nanoseconds.
    pub time: i64,
    /// What was lost since the previous checkpoint.
    pub lost: Lost,
}

/// A checkpoint as it leaves the host: the `checkpoint` entry's own
/// sequence number and hash (so it vouches for every entry up to and
/// including itself), its time and what was lost before it. Serialized as
/// one JSON object with `"kind":"checkpoint"`, the line the file and stdout
/// sinks write and `ledger verify --anchor` reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "checkpoint")]
pub struct Checkpoint {
    /// The checkpoint entry's sequence number.
    pub seq: i64,
    /// The checkpoint entry's hash: the chain's head when it was taken.
    pub head: String,
    /// When it was taken, unix nanoseconds.
    pub time: i64,
    /// What was lost since the previous checkpoint.
    pub lost: Lost,
}

impl Checkpoint {
    /// The anchor it gives.
    pub fn anchor(&self) -> Anchor {
        Anchor(Head {
            seq: self.seq,
            hash: self.head.clone(),
        })
    }
}

/// The content of a `prune` entry: the chain was cut below the
/// checkpoint `below` (whose hash was `head`); the entries before it went,
/// with the rows they vouched for and whatever else was older than
/// `before`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneEntry {
    /// The kept checkpoint: the chain's first entry from now on.
    pub below: i64,
    /// Its hash.
    pub head: String,
    /// The time it was taken (what was older went too), unix nanoseconds.
    pub before: i64,
    /// When the prune ran, unix nanoseconds.
    pub time: i64,
    /// Ledger entries deleted.
    pub entries: u64,
    /// `process_events` rows deleted.
    pub events: u64,
    /// `alerts` rows deleted.
    pub alerts: u64,
    /// Snapshots deleted (with their rows).
    pub snapshots: u64,
    /// Exited processes deleted from `processes`.
    pub processes: u64,
    /// Performance rows deleted.
    pub performance: u64,
    /// Connection rows deleted (none before schema 7).
    #[serde(default)]
    pub connections: u64,
    /// File-event rows deleted (none before schema 9).
    #[serde(default)]
    pub file_events: u64,
}

/// The content of a `start` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEntry {
    /// The agent's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, unix nanoseconds.
    pub time: i64,
    /// The chain's head it found (none: a new ledger).
    pub previous: Option<Head>,
}

/// The content of a `stop` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopEntry {
    /// The agent's process id.
    pub pid: u32,
    /// When it stopped, unix nanoseconds.
    pub time: i64,
}

/// A head recorded elsewhere, that the chain must still hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Anchor(pub Head);

fn malformed(text: &str, reason: impl Into<String>) -> AnchorError {
    AnchorError::Malformed {
        text: text.chars().take(80).collect(),
        reason: reason.into(),
    }
}

impl std::str::FromStr for Anchor {
    type Err = AnchorError;

    /// `SEQ:HEX` (as [`Head`] displays), or a checkpoint's JSON line.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.starts_with('{') {
            let cp: Checkpoint = serde_json::from_str(text)
                .map_err(|e| malformed(text, format!("not a checkpoint: {e}")))?;
            return Self::checked(cp.seq, &cp.head, text);
        }
        let (seq, hash) = text
            .split_once(':')
            .ok_or_else(|| malformed(text, "no `:` between the sequence number and the hash"))?;
        let seq: i64 = seq
            .parse()
            .map_err(|e| malformed(text, format!("sequence number: {e}")))?;
        Self::checked(seq, hash, text)
    }
}

impl Anchor {
    fn checked(seq: i64, hash: &str, text: &str) -> Result<Self, AnchorError> {
        if seq < 1 {
            return Err(malformed(text, "the sequence number must be at least 1"));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed(text, "the hash must be 64 hex digits"));
        }
        Ok(Self(Head {
            seq,
            hash: hash.to_ascii_lowercase(),
        }))
    }

    /// The anchors of a file of JSON lines (the file sink's output): every
    /// checkpoint line, in order; other JSON lines (alerts) are skipped.
    ///
    /// # Errors
    /// [`AnchorError::Line`] for a line that is not JSON (or a checkpoint
    /// line that does not parse), [`AnchorError::NoCheckpoint`] when none is
    /// found.
    pub fn from_lines(text: &str) -> Result<Vec<Self>, AnchorError> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| AnchorError::Line {
                line: i + 1,
                reason,
            };
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            if value.get("kind").and_then(serde_json::Value::as_str) != Some("checkpoint") {
                continue;
            }
            let anchor = line.parse::<Self>().map_err(|e| bad(e.to_string()))?;
            out.push(anchor);
        }
        if out.is_empty() {
            return Err(AnchorError::NoCheckpoint);
        }
        Ok(out)
    }
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Entries checked.
    pub entries: i64,
    /// Hex hash of the last entry (the genesis hash when empty).
    pub head: String,
    /// The last entry's sequence number (0 when empty).
    pub seq: i64,
    /// The first entry's sequence number: 1, or the checkpoint the chain
    /// was pruned below (0 when empty).
    pub first: i64,
}

/// Creates the ledger table if it does not exist.
///
/// # Errors
/// SQLite errors.
pub fn create(conn: &Connection) -> Result<(), LedgerError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The hash of one entry: length-prefixed fields, so no two different
/// entries encode alike.
pub fn entry_hash(seq: i64, kind: &str, content: &str, prev_hash: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_le_bytes());
    for field in [kind, content, prev_hash] {
        h.update(&(field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The head of the chain inside one transaction: read once, then advanced
/// in memory by each [`Chain::append`], so a batch of entries costs one
/// lookup instead of one per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    next_seq: i64,
    prev: String,
}

impl Chain {
    /// Reads the current head inside `tx`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn load(tx: &Transaction<'_>) -> Result<Self, LedgerError> {
        let last: Option<(i64, String)> = tx
            .prepare_cached("SELECT seq, entry_hash FROM ledger ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match last {
            Some((s, h)) => Self {
                next_seq: s + 1,
                prev: h,
            },
            None => Self {
                next_seq: 1,
                prev: to_hex(&GENESIS),
            },
        })
    }

    /// Appends one entry inside `tx` (so it commits with the data it
    /// records). Returns its sequence number. The chain must have been
    /// loaded in the same transaction.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn append(
        &mut self,
        tx: &Transaction<'_>,
        kind: &str,
        content: &str,
    ) -> Result<i64, LedgerError> {
        let seq = self.next_seq;
        let hash = entry_hash(seq, kind, content, &self.prev);
        tx.prepare_cached(
            "INSERT INTO ledger (seq, kind, content, prev_hash, entry_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![seq, kind, content, self.prev, hash])?;
        self.next_seq += 1;
        self.prev = hash;
        Ok(seq)
    }

    /// The sequence number the next entry appended will have (rows name
    /// their entry before it is appended, in the same transaction).
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// The last entry appended (or loaded); sequence number 0 and the
    /// genesis hash for an empty chain.
    pub fn head(&self) -> Head {
        Head {
            seq: self.next_seq - 1,
            hash: self.prev.clone(),
        }
    }
}

/// Appends one entry inside `tx` (so it commits with the data it records).
/// Returns its sequence number. For many entries in one transaction,
/// [`Chain`] reads the head once.
///
/// # Errors
/// SQLite errors.
pub fn append(tx: &Transaction<'_>, kind: &str, content: &str) -> Result<i64, LedgerError> {
    Chain::load(tx)?.append(tx, kind, content)
}

/// Walks the whole chain, from its first entry: the first of all, or the
/// checkpoint the newest `prune` entry says the chain was cut below.
///
/// # Errors
/// [`LedgerError::Broken`] naming the first bad entry: a gap in the
/// sequence (deleted), a `prev_hash` that is not the previous entry's hash
/// (reordered or inserted), or a hash that does not match the content
/// (edited); a chain that starts elsewhere than at its first entry or at
/// the checkpoint its newest `prune` entry names (entries deleted from its
/// start).
pub fn verify(conn: &Connection) -> Result<Verified, LedgerError> {
    let mut stmt =
        conn.prepare("SELECT seq, kind, content, prev_hash, entry_hash FROM ledger ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1;
    let mut prev = to_hex(&GENESIS);
    let mut start: Option<(i64, String)> = None;
    let mut pruned: Option<PruneEntry> = None;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let kind: String = r.get(1)?;
        let content: String = r.get(2)?;
        let prev_hash: String = r.get(3)?;
        let hash: String = r.get(4)?;
        if start.is_none() {
            // A pruned chain starts at a checkpoint, whose link to the
            // entry before it cannot be checked (that entry is gone).
            if seq > 1 && kind == "checkpoint" {
                expected_seq = seq;
                prev.clone_from(&prev_hash);
            }
            start = Some((seq, hash.clone()));
        }
        if seq != expected_seq {
            return Err(LedgerError::Broken {
                seq: expected_seq,
                reason: "missing: the entry was deleted",
            });
        }
        if prev_hash != prev {
            return Err(LedgerError::Broken {
                seq,
                reason: "does not follow the previous entry (reordered or inserted)",
            });
        }
        if entry_hash(seq, &kind, &content, &prev_hash) != hash {
            return Err(LedgerError::Broken {
                seq,
                reason: "its content does not match its hash (edited)",
            });
        }
        if kind == "prune" {
            pruned = serde_json::from_str(&content).ok();
        }
        prev = hash;
        expected_seq += 1;
    }
    let first = match start {
        Some((first, hash)) if first > 1 => {
            if !pruned.is_some_and(|p| p.below == first && p.head == hash) {
                return Err(LedgerError::Broken {
                    seq: first,
                    reason: "the entries before it are gone and no prune entry says the chain was cut there (deleted)",
                });
            }
            first
        }
        Some((first, _)) => first,
        None => 0,
    };
    Ok(Verified {
        entries: if first == 0 { 0 } else { expected_seq - first },
        head: prev,
        seq: expected_seq - 1,
        first,
    })
}

/// Checks that the chain still holds every anchor: its entry at the
/// anchor's sequence number exists and has the anchor's hash. Run after
/// [`verify`] (which proves the chain consistent up to its end): the
/// newest anchor then proves no entry up to it was cut or rewritten. A
/// ledger table that is gone is an empty chain. An anchor below the
/// chain's first entry (pruned, as [`verify`] checks) is passed over: what
/// it vouched for is gone.
///
/// # Errors
/// The first failing anchor, in the order given:
/// [`LedgerError::TailCut`] or [`LedgerError::HeadDiffers`];
/// [`LedgerError::Sqlite`] when the ledger cannot be read.
pub fn verify_anchors(conn: &Connection, anchors: &[Anchor]) -> Result<(), LedgerError> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'ledger'",
        [],
        |r| r.get(0),
    )?;
    let (first, last): (i64, i64) = if exists {
        conn.query_row(
            "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM ledger",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
    } else {
        (0, 0)
    };
    for Anchor(head) in anchors {
        if head.seq < first {
            continue;
        }
        if head.seq > last {
            return Err(LedgerError::TailCut {
                entries: last,
                anchor: head.seq,
            });
        }
        let hash: Option<String> = conn
            .query_row(
                "SELECT entry_hash FROM ledger WHERE seq = ?1",
                [head.seq],
                |r| r.get(0),
            )
            .optional()?;
        if hash.as_deref() != Some(head.hash.as_str()) {
            return Err(LedgerError::HeadDiffers { seq: head.seq });
        }
    }
    Ok(())
}

/// The agent's runs as the chain records them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Runs {
    /// `start` entries.
    pub starts: u64,
    /// `stop` entries.
    pub stops: u64,
    /// The `start` entries that followed a `start` with no `stop` between:
    /// the run before each ended uncleanly (killed, crashed, power lost).
    pub unclean: Vec<i64>,
    /// Whether the last `start` has no `stop` after it (the agent runs, or
    /// its last run ended uncleanly).
    pub running: bool,
    /// `checkpoint` entries.
    pub checkpoints: u64,
    /// The newest `checkpoint` entry.
    pub last_checkpoint: Option<i64>,
    /// `gap` entries (writes the store lost).
    pub gaps: u64,
}

/// Reads the `start`, `stop`, `checkpoint` and `gap` entries.
///
/// # Errors
/// SQLite errors.
pub fn runs(conn: &Connection) -> Result<Runs, LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT seq, kind FROM ledger WHERE kind IN ('start', 'stop', 'checkpoint', 'gap')          ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut runs = Runs::default();
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let kind: String = r.get(1)?;
        match kind.as_str() {
            "start" => {
                if runs.running {
                    runs.unclean.push(seq);
                }
                runs.starts += 1;
                runs.running = true;
            }
            "stop" => {
                runs.stops += 1;
                runs.running = false;
            }
            "checkpoint" => {
                runs.checkpoints += 1;
                runs.last_checkpoint = Some(seq);
            }
            _ => runs.gaps += 1,
        }
    }
    Ok(runs)
}

/// What an `alerts` row must say as its entry does: (row expression, JSON
/// path in the entry; `$` is the whole entry, compared as text).
const ALERT_FIELDS: &[(&str, &str)] = &[
    ("r.body", "$"),
    ("r.rule_id", "$.rule_id"),
    ("r.rule_name", "$.rule_name"),
    ("r.severity", "$.severity"),
    ("r.pid", "$.process.pid"),
    ("r.process_key", "$.process.process_key"),
    ("r.dedup_key", "$.dedup_key"),
    ("r.observed_at", "$.observed_at"),
    ("r.raised_at", "$.raised_at"),
];

/// What a `process_events` row must say as its `process_event` entry (a
/// JSON copy of the event, written before schema 6) does.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("r.pid", "$.pid"),
    ("r.ppid", "$.ppid"),
    ("r.name", "$.name"),
    ("r.exe", "$.executable_path"),
    ("json(r.argv)", "$.command_line"),
    ("r.uid", "$.user_id"),
    ("r.event_type", "$.event_type"),
    ("r.process_key", "$.process_key"),
    ("r.exe_hash", "$.executable_hash"),
    ("r.exit_code", "$.exit_code"),
    ("r.event_id", "$.id"),
];

/// The first row of `table` (as `r`) whose ledger entry is missing, not of
/// `kind`, or says otherwise for one of `fields`; rows naming an entry of
/// `other` (checked elsewhere) aside.
fn row_edited(kind: &str, other: Option<&str>, table: &str, fields: &[(&str, &str)]) -> String {
    let differs: String = fields
        .iter()
        .map(|&(row, path)| match path {
            "$" => format!(" OR {row} IS NOT l.content"),
            _ => format!(" OR {row} IS NOT json_extract(l.content, '{path}')"),
        })
        .collect();
    let aside = other.map_or_else(String::new, |o| format!("l.kind IS NOT '{o}' AND "));
    format!(
        "SELECT r.ledger_seq FROM {table} r \
         LEFT JOIN ledger l ON l.seq = r.ledger_seq \
         WHERE r.ledger_seq IS NOT NULL AND {aside}(l.seq IS NULL OR l.kind IS NOT '{kind}'{differs}) \
         ORDER BY r.ledger_seq LIMIT 1"
    )
}

/// The first entry of `kind` whose row in `table` is gone.
fn row_deleted(kind: &str, table: &str) -> String {
    format!(
        "SELECT l.seq FROM ledger l WHERE l.kind = '{kind}' \
         AND NOT EXISTS (SELECT 1 FROM {table} r WHERE r.ledger_seq = l.seq) \
         ORDER BY l.seq LIMIT 1"
    )
}

/// The first row naming an [`EVENTS_KIND`] entry that does not cover it
/// (a row inserted, or moved out of its batch).
const EVENT_OUTSIDE_ITS_BATCH: &str = "SELECT r.ledger_seq FROM process_events r \
     JOIN ledger l ON l.seq = r.ledger_seq WHERE l.kind = 'process_events' \
     AND r.id NOT BETWEEN json_extract(l.content, '$.first') AND json_extract(l.content, '$.last') \
     ORDER BY r.ledger_seq LIMIT 1";

/// Checks every [`EVENTS_KIND`] entry against its rows, in order: the first
/// whose rows are not all there, or not as written.
fn verify_event_batches(conn: &Connection) -> Result<(), LedgerError> {
    let mut stmt = conn.prepare("SELECT seq, content FROM ledger WHERE kind = ?1 ORDER BY seq")?;
    let mut entries = stmt.query([EVENTS_KIND])?;
    while let Some(r) = entries.next()? {
        let seq: i64 = r.get(0)?;
        let content: String = r.get(1)?;
        let Ok(entry) = serde_json::from_str::<EventsEntry>(&content) else {
            return Err(LedgerError::Broken {
                seq,
                reason: "its content is not a batch of rows (edited)",
            });
        };
        let (n, digest) = rows_digest(conn, entry.first, entry.last, entry.columns)?;
        if n < entry.last - entry.first + 1 {
            return Err(LedgerError::Broken {
                seq,
                reason: "a row of its batch is gone (the row was deleted)",
            });
        }
        if digest != entry.digest {
            return Err(LedgerError::Broken {
                seq,
                reason: "its rows do not say what they said when written (a row was edited)",
            });
        }
    }
    Ok(())
}

/// Checks the rows the ledger vouches for against their entries: every
/// `alerts` row (what `daemoneye-cli alerts` shows) and every
/// `process_events` row with an entry must say what the entry says, and no
/// entry may have lost its row. A batch entry ([`EVENTS_KIND`]) is checked
/// by hashing its rows again ([`rows_digest`]); a `process_event` entry of
/// an older store field by field against its JSON copy. Alerts stored
/// before their rows named their entries (an adopted legacy store) are not
/// checked for deletion.
///
/// # Errors
/// [`LedgerError::Broken`] naming the first entry whose row was edited or
/// deleted; [`LedgerError::Sqlite`] when the tables cannot be read.
pub fn verify_rows(conn: &Connection) -> Result<(), LedgerError> {
    let first = |sql: &str| -> Result<Option<i64>, LedgerError> {
        Ok(conn.query_row(sql, [], |r| r.get(0)).optional()?)
    };
    verify_event_batches(conn)?;
    let edited = "its row does not say what the entry says (the row was edited)";
    let deleted = "its row is gone (the row was deleted)";
    let unnamed: i64 = conn.query_row(
        "SELECT count(*) FROM alerts WHERE ledger_seq IS NULL",
        [],
        |r| r.get(0),
    )?;
    let checks = [
        (
            Some(row_edited("alert", None, "alerts", ALERT_FIELDS)),
            edited,
        ),
        (
            Some(row_edited(
                "process_event",
                Some(EVENTS_KIND),
                "process_events",
                EVENT_FIELDS,
            )),
            edited,
        ),
        (
            Some(EVENT_OUTSIDE_ITS_BATCH.to_owned()),
            "a row names it that is not of its batch (the row was inserted or edited)",
        ),
        (
            (unnamed == 0).then(|| row_deleted("alert", "alerts")),
            deleted,
        ),
        (
            Some(row_deleted("process_event", "process_events")),
            deleted,
        ),
    ];
    for (sql, reason) in checks {
        if let Some(seq) = sql.map(|q| first(&q)).transpose()?.flatten() {
            return Err(LedgerError::Broken { seq, reason });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ledger(n: usize) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..n {
            append(&tx, "alert", &format!("{{\"n\":{i}}}")).unwrap();
        }
        tx.commit().unwrap();
        conn
    }

    /// Where a five-entry chain breaks once `sql` has run on it.
    fn broken_by(sql: &str) -> i64 {
        let conn = ledger(5);
        conn.execute_batch(sql).unwrap();
        broken_at(&conn)
    }

    fn broken_at(conn: &Connection) -> i64 {
        match verify(conn) {
            Err(LedgerError::Broken { seq, .. }) => seq,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let conn = ledger(5);
        let v = verify(&conn).unwrap();
        assert_eq!(v.entries, 5);
        let last: String = conn
            .query_row("SELECT entry_hash FROM ledger WHERE seq = 5", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(v.head, last);
        assert_eq!(verify(&ledger(0)).unwrap().entries, 0);
    }

    #[test]
    fn an_edited_entry_is_named() {
        assert_eq!(
            broken_by("UPDATE ledger SET content = '{\"n\":99}' WHERE seq = 3"),
            3
        );
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let conn = ledger(5);
        let prev: String = conn
            .query_row("SELECT prev_hash FROM ledger WHERE seq = 3", [], |r| {
                r.get(0)
            })
            .unwrap();
        let forged = entry_hash(3, "alert", "{\"n\":99}", &prev);
        conn.execute(
            "UPDATE ledger SET content = '{\"n\":99}', entry_hash = ?1 WHERE seq = 3",
            [forged],
        )
        .unwrap();
        assert_eq!(broken_at(&conn), 4);
    }

    #[test]
    fn a_deleted_entry_is_named() {
        assert_eq!(broken_by("DELETE FROM ledger WHERE seq = 2"), 2);
    }

    #[test]
    fn reordered_entries_are_found() {
        let swap = "UPDATE ledger SET seq = -1 WHERE seq = 2;
             UPDATE ledger SET seq = 2 WHERE seq = 3;
             UPDATE ledger SET seq = 3 WHERE seq = -1;";
        assert_eq!(broken_by(swap), 2);
    }

    #[test]
    fn a_chain_appends_like_single_appends() {
        let one = ledger(4);
        let mut conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        append(&tx, "alert", "{\"n\":0}").unwrap();
        let mut chain = Chain::load(&tx).unwrap();
        for i in 1..4 {
            assert_eq!(
                chain
                    .append(&tx, "alert", &format!("{{\"n\":{i}}}"))
                    .unwrap(),
                i + 1
            );
        }
        tx.commit().unwrap();
        assert_eq!(verify(&conn).unwrap(), verify(&one).unwrap());
    }

    fn head_at(conn: &Connection, seq: i64) -> Anchor {
        let hash: String = conn
            .query_row("SELECT entry_hash FROM ledger WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap();
        Anchor(Head { seq, hash })
    }

    #[test]
    fn anchors_hold_until_the_tail_is_cut_or_the_chain_rebuilt() {
        let conn = ledger(5);
        let (three, five) = (head_at(&conn, 3), head_at(&conn, 5));
        verify_anchors(&conn, &[three.clone(), five.clone()]).unwrap();
        // Cut the tail: the chain still verifies, the anchor does not.
        conn.execute_batch("DELETE FROM ledger WHERE seq > 3")
            .unwrap();
        assert_eq!(verify(&conn).unwrap().entries, 3);
        verify_anchors(&conn, std::slice::from_ref(&three)).unwrap();
        match verify_anchors(&conn, &[three.clone(), five.clone()]) {
            Err(
                e @ LedgerError::TailCut {
                    entries: 3,
                    anchor: 5,
                },
            ) => {
                assert!(
                    e.to_string().contains("chain ends at seq 3, anchor at 5"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Rebuild it from an edited first entry: verifies, anchor fails.
        let forged = ledger(0);
        {
            let mut forged = forged;
            let tx = forged.transaction().unwrap();
            append(&tx, "alert", "{\"n\":99}").unwrap();
            for i in 1..5 {
                append(&tx, "alert", &format!("{{\"n\":{i}}}")).unwrap();
            }
            tx.commit().unwrap();
            assert_eq!(verify(&forged).unwrap().entries, 5);
            match verify_anchors(&forged, std::slice::from_ref(&five)) {
                Err(e @ LedgerError::HeadDiffers { seq: 5 }) => {
                    assert!(e.to_string().contains("entry 5's hash differs"), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        // The whole ledger gone: rows, or the table itself.
        conn.execute_batch("DELETE FROM ledger").unwrap();
        assert!(matches!(
            verify_anchors(&conn, std::slice::from_ref(&three)),
            Err(LedgerError::TailCut {
                entries: 0,
                anchor: 3
            })
        ));
        conn.execute_batch("DROP TABLE ledger").unwrap();
        assert!(matches!(
            verify_anchors(&conn, &[three]),
            Err(LedgerError::TailCut {
                entries: 0,
                anchor: 3
            })
        ));
    }

    #[test]
    fn anchors_parse_from_seq_hex_and_checkpoint_lines_and_bad_ones_are_named() {
        let hex = "ab".repeat(32);
        let a: Anchor = format!("7:{}", hex.to_uppercase()).parse().unwrap();
        assert_eq!(
            a.0,
            Head {
                seq: 7,
                hash: hex.clone()
            }
        );
        let cp = Checkpoint {
            seq: 7,
            head: hex.clone(),
            time: 1,
            lost: Lost::default(),
        };
        let line = serde_json::to_string(&cp).unwrap();
        assert!(line.starts_with("{\"kind\":\"checkpoint\","), "{line}");
        assert_eq!(line.parse::<Anchor>().unwrap(), cp.anchor());
        assert_eq!(serde_json::from_str::<Checkpoint>(&line).unwrap(), cp);
        assert_eq!(cp.anchor().0.to_string().parse::<Anchor>().unwrap(), a);
        for (bad, why) in [
            (String::new(), "no `:`"),
            ("7".into(), "no `:`"),
            ("x:ab".into(), "sequence number"),
            ("0:".to_owned() + &hex, "at least 1"),
            ("-3:".to_owned() + &hex, "at least 1"),
            ("7:abc".into(), "64 hex digits"),
            (format!("7:{}", "zz".repeat(32)), "64 hex digits"),
            ("{\"kind\":\"alert\"}".into(), "not a checkpoint"),
            (
                "{\"kind\":\"checkpoint\",\"seq\":1}".into(),
                "not a checkpoint",
            ),
        ] {
            let err = bad.parse::<Anchor>().unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
        // A file: alerts skipped, checkpoints in order, bad lines named.
        let other = Checkpoint {
            seq: 9,
            ..cp.clone()
        };
        let file = format!(
            "{{\"rule_id\":\"r\"}}\n{line}\n\n{}\n",
            serde_json::to_string(&other).unwrap()
        );
        assert_eq!(
            Anchor::from_lines(&file).unwrap(),
            vec![cp.anchor(), other.anchor()]
        );
        assert_eq!(
            Anchor::from_lines("{\"rule_id\":\"r\"}\n"),
            Err(AnchorError::NoCheckpoint)
        );
        let err = Anchor::from_lines(&format!("{line}\nnot json\n")).unwrap_err();
        assert!(matches!(err, AnchorError::Line { line: 2, .. }), "{err:?}");
        let err = Anchor::from_lines("{\"kind\":\"checkpoint\",\"seq\":2}\n").unwrap_err();
        assert!(matches!(err, AnchorError::Line { line: 1, .. }), "{err:?}");
    }

    #[test]
    fn a_start_without_a_stop_before_it_is_an_unclean_end() {
        let mut conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        for kind in [
            "start",
            "checkpoint",
            "stop",
            "start",
            "alert",
            "start",
            "gap",
            "checkpoint",
        ] {
            append(&tx, kind, "{}").unwrap();
        }
        tx.commit().unwrap();
        let r = runs(&conn).unwrap();
        assert_eq!(
            r,
            Runs {
                starts: 3,
                stops: 1,
                unclean: vec![6],
                running: true,
                checkpoints: 2,
                last_checkpoint: Some(8),
                gaps: 1,
            }
        );
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        assert_ne!(entry_hash(1, "ab", "c", "x"), entry_hash(1, "a", "bc", "x"));
    }
}
