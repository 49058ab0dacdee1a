//! Bounds on the store: retention by age and by size ([`Retention`]), and
//! the prune that holds them ([`Store::prune`](crate::Store::prune)).
//!
//! A prune cuts the ledger below one of its checkpoints, never elsewhere:
//! the entries before that checkpoint are deleted with the rows they vouch
//! for (lifecycle events, alerts), and so is what is older than the
//! checkpoint's time and on no entry (snapshots but the newest, exited
//! processes, performance samples, connections, file events, events stored
//! without an entry). A
//! `prune` entry ([`PruneEntry`]) is then appended, saying where the chain
//! was cut and what went: `ledger verify` starts from that checkpoint and
//! still catches any kept row edited or deleted.
//!
//! By age, the cut is the newest checkpoint older than `max_age`. By size,
//! when the pages in use exceed `max_bytes`, it is the oldest checkpoint
//! below which enough lifecycle events lie to bring the store to
//! [`SIZE_TARGET_PERCENT`] of `max_bytes` (SQLite reuses the freed pages,
//! so the file stops growing). The [`StoreWriter`](crate::StoreWriter)
//! takes checkpoints of its own often enough to cut at (every sixteenth of
//! `max_bytes` written, every sixteenth of `max_age`) and prunes after the
//! transaction that goes over the bound.

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use crate::ledger::{Chain, PruneEntry, EVENTS_KIND};
use crate::store::StoreError;

/// How much the store keeps; `None` in a field: no bound of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// What is older than this goes (lifecycle events, alerts, snapshots,
    /// exited processes, the ledger entries below the cut).
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// The most bytes of database pages in use; past it the oldest data
    /// goes.
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// Whether anything is bounded.
    pub fn is_bounded(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

/// A prune by size brings the pages in use down to this share of
/// `max_bytes`, so that the next one is some way off.
pub const SIZE_TARGET_PERCENT: u64 = 75;

/// The smallest `max_bytes` accepted: the empty schema and a transaction's
/// worth of rows.
pub const MIN_MAX_BYTES: u64 = 1 << 20;

/// The bytes of database pages in use (freed pages, which SQLite reuses
/// before it grows the file, not counted).
pub(crate) fn used_bytes(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let pragma = |name: &str| -> Result<i64, StoreError> {
        Ok(conn.pragma_query_value(None, name, |r| r.get(0))?)
    };
    let pages = pragma("page_count")? - pragma("freelist_count")?;
    Ok(u64::try_from(pages.saturating_mul(pragma("page_size")?)).unwrap_or(0))
}

/// A checkpoint the chain may be cut below.
#[derive(Debug)]
struct Cut {
    seq: i64,
    hash: String,
    time: i64,
}

/// Prunes inside `tx` as `retention` says, `now` being unix nanoseconds;
/// returns the `prune` entry appended, or `None` when nothing was due.
pub(crate) fn prune_in(
    tx: &Transaction<'_>,
    retention: &Retention,
    now: i64,
) -> Result<Option<PruneEntry>, StoreError> {
    let first: i64 = tx.query_row("SELECT coalesce(min(seq), 0) FROM ledger", [], |r| r.get(0))?;
    // Cutting at the chain's first entry would free nothing.
    let cuts: Vec<Cut> = tx
        .prepare(
            "SELECT seq, entry_hash, coalesce(json_extract(content, '$.time'), 0) FROM ledger \
             WHERE kind = 'checkpoint' AND seq > ?1 ORDER BY seq",
        )?
        .query_map([first], |r| {
            Ok(Cut {
                seq: r.get(0)?,
                hash: r.get(1)?,
                time: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let by_age = retention.max_age.and_then(|age| {
        let limit = now.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX));
        cuts.iter().rev().find(|c| c.time <= limit)
    });
    let by_size = match retention.max_bytes {
        Some(max) => size_cut(tx, &cuts, max)?,
        None => None,
    };
    let Some(cut) = [by_age, by_size]
        .into_iter()
        .flatten()
        .max_by_key(|c| c.seq)
    else {
        return Ok(None);
    };
    let last_event = last_event_below(tx, cut.seq)?.unwrap_or(0);
    // Events, not rows: a row may hold a fork and an exit beside its exec.
    let events: usize = tx
        .prepare(
            "DELETE FROM process_event_rows WHERE id <= ?1 OR ledger_seq < ?2 \
             OR (ledger_seq IS NULL AND observed_at < ?3) \
             RETURNING 1 + (forked_at IS NOT NULL) + (exited_at IS NOT NULL)",
        )?
        .query_map(params![last_event, cut.seq, cut.time], |r| {
            r.get::<_, usize>(0)
        })?
        .sum::<Result<usize, _>>()?;
    if events > 0 {
        crate::events::prune_strings(tx)?;
    }
    let alerts = tx.execute(
        "DELETE FROM alerts WHERE ledger_seq < ?1 OR (ledger_seq IS NULL AND raised_at < ?2)",
        params![cut.seq, cut.time],
    )?;
    // Their rows go with them (ON DELETE CASCADE); the newest stays.
    let snapshots = tx.execute(
        "DELETE FROM snapshots WHERE taken_at < ?1 AND id < (SELECT max(id) FROM snapshots)",
        [cut.time],
    )?;
    let processes = tx.execute("DELETE FROM processes WHERE exited_at < ?1", [cut.time])?;
    let performance = tx.execute("DELETE FROM performance WHERE observed_at < ?1", [cut.time])?;
    let connections = tx.execute("DELETE FROM connections WHERE observed_at < ?1", [cut.time])?;
    let file_events = tx.execute("DELETE FROM file_events WHERE observed_at < ?1", [cut.time])?;
    let entries = tx.execute("DELETE FROM ledger WHERE seq < ?1", [cut.seq])?;
    let count = |n: usize| n as u64;
    let entry = PruneEntry {
        below: cut.seq,
        head: cut.hash.clone(),
        before: cut.time,
        time: now,
        entries: count(entries),
        events: count(events),
        alerts: count(alerts),
        snapshots: count(snapshots),
        processes: count(processes),
        performance: count(performance),
        connections: count(connections),
        file_events: count(file_events),
    };
    let content = serde_json::to_string(&entry).map_err(|source| StoreError::Encode {
        field: "prune entry",
        source,
    })?;
    Chain::load(tx)?.append(tx, "prune", &content)?;
    Ok(Some(entry))
}

/// The id of the last lifecycle event an entry below `seq` vouches for.
fn last_event_below(tx: &Transaction<'_>, seq: i64) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT json_extract(content, '$.last') FROM ledger WHERE kind = ?1 AND seq < ?2 \
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![EVENTS_KIND, seq], |r| r.get(0))
        .optional()?
        .flatten())
}

/// When the pages in use exceed `max`: the oldest of `cuts` below which
/// enough of the lifecycle events lie (they are most of the store) to
/// bring it to [`SIZE_TARGET_PERCENT`] of `max`, else the newest.
fn size_cut<'c>(
    tx: &Transaction<'_>,
    cuts: &'c [Cut],
    max: u64,
) -> Result<Option<&'c Cut>, StoreError> {
    let used = used_bytes(tx)?;
    if used <= max {
        return Ok(None);
    }
    let need = used - max / 100 * SIZE_TARGET_PERCENT;
    let (lowest, highest): (Option<i64>, Option<i64>) =
        tx.query_row("SELECT min(id), max(id) FROM process_events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    if let (Some(lowest), Some(highest)) = (lowest, highest) {
        let rows = (highest - lowest + 1) as f64;
        for c in cuts {
            let below = last_event_below(tx, c.seq)?.map_or(0, |last| last - lowest + 1);
            if below as f64 / rows * used as f64 >= need as f64 {
                return Ok(Some(c));
            }
        }
    }
    Ok(cuts.last())
}
