//! The audit ledger: an append-only table whose every entry holds the
//! BLAKE3 hash of its content and of the entry before it.
//!
//! Editing, deleting or reordering a stored entry breaks the chain, and
//! [`verify`] names the first bad entry. Cutting entries off the *end* leaves
//! a shorter valid chain: compare the head hash [`verify`] reports with one
//! recorded elsewhere (logs, a remote sink) to catch that too.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

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
    /// SQLite failed.
    #[error("ledger database error")]
    Sqlite(#[from] rusqlite::Error),
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Entries checked.
    pub entries: i64,
    /// Hex hash of the last entry (the genesis hash when empty).
    pub head: String,
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

/// Walks the whole chain.
///
/// # Errors
/// [`LedgerError::Broken`] naming the first bad entry: a gap in the
/// sequence (deleted), a `prev_hash` that is not the previous entry's hash
/// (reordered or inserted), or a hash that does not match the content
/// (edited).
pub fn verify(conn: &Connection) -> Result<Verified, LedgerError> {
    let mut stmt =
        conn.prepare("SELECT seq, kind, content, prev_hash, entry_hash FROM ledger ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1;
    let mut prev = to_hex(&GENESIS);
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let kind: String = r.get(1)?;
        let content: String = r.get(2)?;
        let prev_hash: String = r.get(3)?;
        let hash: String = r.get(4)?;
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
        prev = hash;
        expected_seq += 1;
    }
    Ok(Verified {
        entries: expected_seq - 1,
        head: prev,
    })
}

/// The first `alerts` row whose ledger entry says otherwise (its body, or a
/// column that is not its body's).
const ALERT_ROW_EDITED: &str = "SELECT a.ledger_seq FROM alerts a \
     LEFT JOIN ledger l ON l.seq = a.ledger_seq \
     WHERE a.ledger_seq IS NOT NULL AND (l.seq IS NULL OR l.kind IS NOT 'alert' \
       OR l.content IS NOT a.body \
       OR a.rule_id IS NOT json_extract(l.content, '$.rule_id') \
       OR a.rule_name IS NOT json_extract(l.content, '$.rule_name') \
       OR a.severity IS NOT json_extract(l.content, '$.severity') \
       OR a.pid IS NOT json_extract(l.content, '$.process.pid') \
       OR a.process_key IS NOT json_extract(l.content, '$.process.process_key') \
       OR a.dedup_key IS NOT json_extract(l.content, '$.dedup_key') \
       OR a.observed_at IS NOT json_extract(l.content, '$.observed_at') \
       OR a.raised_at IS NOT json_extract(l.content, '$.raised_at')) \
     ORDER BY a.ledger_seq LIMIT 1";

/// The first `process_events` row whose ledger entry says otherwise.
const EVENT_ROW_EDITED: &str = "SELECT e.ledger_seq FROM process_events e \
     LEFT JOIN ledger l ON l.seq = e.ledger_seq \
     WHERE e.ledger_seq IS NOT NULL AND (l.seq IS NULL OR l.kind IS NOT 'process_event' \
       OR e.pid IS NOT json_extract(l.content, '$.pid') \
       OR e.ppid IS NOT json_extract(l.content, '$.ppid') \
       OR e.name IS NOT json_extract(l.content, '$.name') \
       OR e.exe IS NOT json_extract(l.content, '$.executable_path') \
       OR json(e.argv) IS NOT json_extract(l.content, '$.command_line') \
       OR e.uid IS NOT json_extract(l.content, '$.user_id') \
       OR e.event_type IS NOT json_extract(l.content, '$.event_type') \
       OR e.process_key IS NOT json_extract(l.content, '$.process_key') \
       OR e.exe_hash IS NOT json_extract(l.content, '$.executable_hash') \
       OR e.exit_code IS NOT json_extract(l.content, '$.exit_code') \
       OR e.event_id IS NOT json_extract(l.content, '$.id')) \
     ORDER BY e.ledger_seq LIMIT 1";

/// The first entry of `kind` whose row in `table` is gone.
fn row_deleted(kind: &str, table: &str) -> String {
    format!(
        "SELECT l.seq FROM ledger l WHERE l.kind = '{kind}' \
         AND NOT EXISTS (SELECT 1 FROM {table} r WHERE r.ledger_seq = l.seq) \
         ORDER BY l.seq LIMIT 1"
    )
}

/// Checks the rows the ledger vouches for against their entries: every
/// `alerts` row (what `daemoneye-cli alerts` shows) and every
/// `process_events` row with an entry must say what the entry says, and no
/// entry may have lost its row. Alerts stored before their rows named
/// their entries (an adopted legacy store) are not checked for deletion.
///
/// # Errors
/// [`LedgerError::Broken`] naming the first entry whose row was edited or
/// deleted; [`LedgerError::Sqlite`] when the tables cannot be read.
pub fn verify_rows(conn: &Connection) -> Result<(), LedgerError> {
    let first = |sql: &str| -> Result<Option<i64>, LedgerError> {
        Ok(conn.query_row(sql, [], |r| r.get(0)).optional()?)
    };
    let edited = "its row does not say what the entry says (the row was edited)";
    let deleted = "its row is gone (the row was deleted)";
    let unnamed: i64 = conn.query_row(
        "SELECT count(*) FROM alerts WHERE ledger_seq IS NULL",
        [],
        |r| r.get(0),
    )?;
    let checks = [
        (Some(ALERT_ROW_EDITED.to_owned()), edited),
        (Some(EVENT_ROW_EDITED.to_owned()), edited),
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

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        assert_ne!(entry_hash(1, "ab", "c", "x"), entry_hash(1, "a", "bc", "x"));
    }
}
