//! The outbox: what waits to leave the host until a broker has
//! acknowledged it (the fleet sink's at-least-once delivery).
//!
//! An item enters the outbox in the same transaction as the row it ships
//! (an alert is stored, ledgered and queued for shipping at once, or not at
//! all; a ledger checkpoint with its `checkpoint` entry), so a crash between storing and shipping loses nothing: the items
//! are still there when the agent starts again. A shipper reads them in
//! order ([`Store::outbox_read`], in batches after the last id it has in
//! flight), publishes each under its stable [`OutboxItem::msg_id`] (a
//! broker's duplicate window drops a resend after a crash between publish
//! and ack), and removes what was acknowledged ([`Store::outbox_ack`]).
//! The events one write ships share one row (a row costs the writer more
//! than its bytes): read item by item, each under its own message id, the
//! row removed once all of them are acknowledged
//! ([`OutboxItem::ends_row`]); depth and drops count items, not rows.
//! The agent's writer does both for its sinks
//! ([`StoreWriter::outbox_read`](crate::StoreWriter::outbox_read),
//! [`StoreWriter::outbox_ack`](crate::StoreWriter::outbox_ack)), so the
//! store keeps its one writer.
//!
//! # When full
//! The outbox holds at most [`Store::with_outbox`]'s bound of items. Past
//! it items are dropped by priority: **events first** (when the store ships
//! them: [`Store::with_shipped_events`]), then alerts, and checkpoints last;
//! the **oldest** first within each. They are counted in
//! [`OutboxState::dropped_events`] and [`OutboxState::dropped`] (kept in the
//! database, so the counts survive restarts). Events first because they are
//! the many and the least each; checkpoints last because they are few and
//! anchor the host's chain. Oldest first because a fleet reader wants the newest alerts of
//! a host that was cut off longest, and because the host's own store keeps
//! every alert: what the outbox drops is never lost from the host, only not
//! shipped. Refusing new items instead would ship stale alerts and hide the
//! fresh ones.
//!
//! ```
//! use daemoneye_store::{Alert, AlertProcess, Severity, Store};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let mut store = Store::open(dir.path())?.with_outbox(Some(2));
//! let alert = Alert {
//!     rule_id: "r".into(),
//!     rule_name: "rule".into(),
//!     severity: Severity::High,
//!     mitre: vec![],
//!     process: AlertProcess::host(),
//!     observed_at: 1,
//!     raised_at: 2,
//!     dedup_key: "r:1".into(),
//!     file: None,
//! };
//! for _ in 0..3 {
//!     store.record_alert(&alert)?;
//! }
//! let items = store.outbox_read(0, 10)?;
//! assert_eq!(items.len(), 2); // the bound: the first alert was dropped
//! assert_eq!(items[0].msg_id, "alert-2");
//! let state = store.outbox_ack(&[items[0].id])?;
//! assert_eq!((state.depth, state.dropped), (1, 1));
//! # Ok(())
//! # }
//! ```

use collector_core::EventKind;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::store::{Store, StoreError};

/// The outbox's bound when the agent ships and its config names none.
pub const DEFAULT_OUTBOX_ITEMS: usize = 100_000;

/// What an item ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxKind {
    /// An alert; its body is the stored alert record (JSON).
    Alert,
    /// A ledger checkpoint; its body is the
    /// [`Checkpoint`](crate::ledger::Checkpoint) as it leaves the host
    /// (JSON), queued with its `checkpoint` entry.
    Checkpoint,
    /// A collector's event of one domain (process lifecycle events,
    /// connections, file events, performance samples), when the store
    /// ships that domain ([`Store::with_shipped_events`]); its body is the
    /// event in the event model's JSON.
    Event(EventKind),
}

impl OutboxKind {
    /// The name stored in the `kind` column (`alert`, `checkpoint`,
    /// `event.<domain>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Checkpoint => "checkpoint",
            Self::Event(EventKind::Process) => "event.process",
            Self::Event(EventKind::Network) => "event.network",
            Self::Event(EventKind::Filesystem) => "event.filesystem",
            Self::Event(EventKind::Performance) => "event.performance",
            Self::Event(_) => "event.other",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "alert" => Some(Self::Alert),
            "checkpoint" => Some(Self::Checkpoint),
            _ => s
                .strip_prefix("event.")
                .and_then(EventKind::from_name)
                .filter(|kind| SHIPPABLE.contains(kind))
                .map(Self::Event),
        }
    }

    /// Its priority when the outbox is full: the lowest is dropped first
    /// (events, then alerts, then checkpoints).
    pub fn priority(self) -> i64 {
        match self {
            Self::Event(_) => 0,
            Self::Alert => 1,
            Self::Checkpoint => 2,
        }
    }
}

/// The event domains a store can ship.
pub const SHIPPABLE: [EventKind; 4] = [
    EventKind::Process,
    EventKind::Network,
    EventKind::Filesystem,
    EventKind::Performance,
];

/// One item waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Its place in the outbox: items are read in this order.
    pub id: i64,
    /// What it ships.
    pub kind: OutboxKind,
    /// Its stable id on this host (`alert-<alert row id>`,
    /// `checkpoint-<ledger seq>`, `event-<domain>-<event id>`): the same on
    /// every resend, for the broker's duplicate detection.
    pub msg_id: String,
    /// The record it ships, as stored (an alert's, a checkpoint's or an
    /// event's JSON).
    pub body: String,
    /// When it entered the outbox (unix nanoseconds).
    pub queued_at: i64,
    /// Whether it is the last item of its row. The events one write ships
    /// share a row (and its [`id`](Self::id)); a row is removed whole
    /// ([`Store::outbox_ack`]), so a shipper acknowledges its id once every
    /// item of it is acknowledged, and reads the row again (all of it: a
    /// broker's duplicate window drops the resends) when one failed.
    /// Alerts and checkpoints are a row each.
    pub ends_row: bool,
}

/// How full the outbox is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxState {
    /// Items waiting.
    pub depth: u64,
    /// Alerts and checkpoints dropped because the outbox was full, ever
    /// (only when it held no event to drop instead; the oldest first).
    pub dropped: u64,
    /// Events dropped because the outbox was full, ever (before any alert
    /// or checkpoint; the oldest first).
    pub dropped_events: u64,
    /// When the oldest waiting item entered (unix nanoseconds).
    pub oldest_queued_at: Option<i64>,
}

impl OutboxState {
    /// A state of `depth` items, the oldest queued at `oldest_queued_at`,
    /// nothing dropped.
    pub fn new(depth: u64, oldest_queued_at: Option<i64>) -> Self {
        Self {
            depth,
            oldest_queued_at,
            ..Self::default()
        }
    }
}

/// What a trim of a full outbox dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) events: u64,
    pub(crate) others: u64,
}

/// Queues `body` inside `tx` (the transaction that stores what it ships),
/// `depth` being the items there before it (the caller keeps it once `tx`
/// commits). Does not trim: see [`trim_in`].
pub(crate) fn queue_in(
    tx: &Transaction<'_>,
    depth: &mut u64,
    kind: OutboxKind,
    msg_id: &str,
    body: &str,
    now: i64,
) -> Result<(), StoreError> {
    insert(tx, depth, kind, (msg_id, body.as_bytes(), 1), now)
}

/// Inserts one row of `items` items (their ids and bodies a line each).
fn insert(
    tx: &Transaction<'_>,
    depth: &mut u64,
    kind: OutboxKind,
    (msg_ids, bodies, items): (&str, &[u8], u64),
    now: i64,
) -> Result<(), StoreError> {
    let (body, packed) = stored(bodies, items);
    tx.prepare_cached(
        "INSERT INTO outbox (kind, msg_id, body, queued_at, priority, items, packed) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        kind.as_str(),
        msg_ids,
        body,
        now,
        kind.priority(),
        i64::try_from(items).unwrap_or(i64::MAX),
        packed,
    ])?;
    *depth += items;
    Ok(())
}

/// How a row's bodies (UTF-8: JSON written by `serde_json` from Rust
/// strings) are stored, as `(body, packed)`: a row of more than one item
/// packs them ([`pack`]) and leaves `body` empty; a row of one keeps its
/// body as text.
fn stored(bodies: &[u8], items: u64) -> (rusqlite::types::ToSqlOutput<'_>, Option<Vec<u8>>) {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    if items > 1 {
        (
            ToSqlOutput::Borrowed(ValueRef::Text(b"")),
            Some(pack(bodies)),
        )
    } else {
        (ToSqlOutput::Borrowed(ValueRef::Text(bodies)), None)
    }
}

/// `text` packed: an LZ4 block, its length first (four bytes, little
/// endian). A write's events, a JSON each, repeat their keys and much of
/// their values: 64 of the fleet bench's come to 11 % (execs each with texts
/// of their own) and 5 % (a busy host's forks, execs and exits).
fn pack(text: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(text)
}

/// LZ4 gives back at most this many bytes per byte it was given (a
/// sequence's length bytes each add at most 255), so a length that claims
/// more is not one [`pack`] wrote.
const MOST_UNPACKED_PER_BYTE: usize = 255;

/// The text of row `id`'s bodies: `packed` ([`pack`]) when it is set, else
/// `body`.
///
/// # Errors
/// [`StoreError::Decode`] for a packed value that [`pack`] did not write
/// (its length bounded before anything is allocated) or that is not UTF-8.
fn bodies_of(id: i64, body: String, packed: Option<&[u8]>) -> Result<String, StoreError> {
    let Some(packed) = packed else {
        return Ok(body);
    };
    let bad = |reason: String| StoreError::Decode {
        table: "outbox",
        column: "packed",
        reason: format!("row {id}: {reason}"),
    };
    let (len, block) =
        lz4_flex::block::uncompressed_size(packed).map_err(|e| bad(e.to_string()))?;
    if len > block.len().saturating_mul(MOST_UNPACKED_PER_BYTE) {
        return Err(bad(format!(
            "{len} bytes cannot come of a block of {}",
            block.len()
        )));
    }
    let text = lz4_flex::block::decompress(block, len).map_err(|e| bad(e.to_string()))?;
    String::from_utf8(text).map_err(|e| bad(e.to_string()))
}

/// The items of one write, gathered into one outbox row: their message
/// ids and bodies a line each (neither holds a line break: ids are made by
/// the store, bodies are JSON without whitespace).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    msg_ids: String,
    /// UTF-8: JSON written by `serde_json`.
    bodies: Vec<u8>,
    items: u64,
}

impl Batch {
    /// Adds an item: `value` in JSON, its message id written by `msg_id`
    /// (given the JSON), each straight into the row's text.
    ///
    /// # Errors
    /// What serializing `value` fails with; nothing is added then.
    pub(crate) fn push_json<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
        msg_id: impl FnOnce(&mut String, &[u8]),
    ) -> Result<(), serde_json::Error> {
        let (ids, bodies) = (self.msg_ids.len(), self.bodies.len());
        if self.items > 0 {
            self.bodies.push(b'\n');
        }
        if let Err(e) = serde_json::to_writer(&mut self.bodies, value) {
            self.bodies.truncate(bodies);
            return Err(e);
        }
        if self.items > 0 {
            self.msg_ids.push('\n');
        }
        let start = bodies + usize::from(self.items > 0);
        msg_id(&mut self.msg_ids, &self.bodies[start..]);
        debug_assert!(!self.msg_ids[ids..].trim_start_matches('\n').contains('\n'));
        self.items += 1;
        Ok(())
    }

    /// Queues the batch as one row inside `tx` (nothing when it is empty),
    /// `depth` counting its items. Does not trim: see [`trim_in`].
    pub(crate) fn queue_in(
        &self,
        tx: &Transaction<'_>,
        depth: &mut u64,
        kind: OutboxKind,
        now: i64,
    ) -> Result<bool, StoreError> {
        if self.items == 0 {
            return Ok(false);
        }
        insert(
            tx,
            depth,
            kind,
            (&self.msg_ids, &self.bodies, self.items),
            now,
        )?;
        Ok(true)
    }
}

/// `text` without its first `n` lines.
fn after_lines(text: &str, n: u64) -> &str {
    let mut rest = text;
    for _ in 0..n {
        rest = rest.split_once('\n').map_or("", |(_, tail)| tail);
    }
    rest
}

/// Drops the items past `bound` inside `tx`, lowest priority first and
/// the oldest first within one (events before alerts, alerts before
/// checkpoints), counting them in `outbox_state`; updates `depth`.
pub(crate) fn trim_in(
    tx: &Transaction<'_>,
    bound: usize,
    depth: &mut u64,
) -> Result<Dropped, StoreError> {
    let bound = u64::try_from(bound.max(1)).unwrap_or(u64::MAX);
    if *depth <= bound {
        return Ok(Dropped::default());
    }
    let mut excess = *depth - bound;
    let mut dropped = Dropped::default();
    // The rows to drop from, in order: no more rows than items to drop.
    let rows: Vec<(i64, i64, u64)> = tx
        .prepare_cached("SELECT id, priority, items FROM outbox ORDER BY priority, id LIMIT ?1")?
        .query_map([i64::try_from(excess).unwrap_or(i64::MAX)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?))
        })?
        .map(|row| {
            row.map(|(id, priority, items)| {
                (id, priority, u64::try_from(items).unwrap_or(1).max(1))
            })
        })
        .collect::<Result<_, _>>()?;
    for (id, priority, items) in rows {
        if excess == 0 {
            break;
        }
        let n = items.min(excess);
        if n == items {
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([id])?;
        } else {
            // The oldest items of a row: the row keeps the rest.
            let (msg_ids, body, packed): (String, String, Option<Vec<u8>>) = tx
                .prepare_cached("SELECT msg_id, body, packed FROM outbox WHERE id = ?1")?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let bodies = bodies_of(id, body, packed.as_deref())?;
            let (body, packed) = stored(after_lines(&bodies, n).as_bytes(), items - n);
            tx.prepare_cached(
                "UPDATE outbox SET msg_id = ?2, body = ?3, items = ?4, packed = ?5 WHERE id = ?1",
            )?
            .execute(params![
                id,
                after_lines(&msg_ids, n),
                body,
                i64::try_from(items - n).unwrap_or(i64::MAX),
                packed,
            ])?;
        }
        if priority == 0 {
            dropped.events += n;
        } else {
            dropped.others += n;
        }
        excess -= n;
    }
    tx.prepare_cached(
        "UPDATE outbox_state SET dropped = dropped + ?1, dropped_events = dropped_events + ?2 \
         WHERE id = 1",
    )?
    .execute(params![dropped.others, dropped.events])?;
    *depth = depth.saturating_sub(dropped.events + dropped.others);
    if dropped.others > 0 {
        tracing::warn!(
            dropped = dropped.others,
            bound,
            "outbox full of alerts and checkpoints, the oldest dropped"
        );
    } else if dropped.events > 0 {
        tracing::debug!(
            dropped = dropped.events,
            bound,
            "outbox full, oldest events dropped"
        );
    }
    Ok(dropped)
}

/// [`queue_in`] then [`trim_in`]: one item queued into an outbox of at
/// most `bound` items.
pub(crate) fn append_in(
    tx: &Transaction<'_>,
    bound: usize,
    depth: &mut u64,
    kind: OutboxKind,
    msg_id: &str,
    body: &str,
    now: i64,
) -> Result<Dropped, StoreError> {
    queue_in(tx, depth, kind, msg_id, body, now)?;
    trim_in(tx, bound, depth)
}

/// The items in the outbox, counted (a walk of every row).
fn count(conn: &Connection) -> Result<u64, StoreError> {
    let depth: i64 = conn.query_row("SELECT coalesce(sum(items), 0) FROM outbox", [], |r| {
        r.get(0)
    })?;
    Ok(u64::try_from(depth).unwrap_or(0))
}

/// Up to `limit` items after the row `after`, whole rows (so it may give
/// a row's worth more).
fn read(conn: &Connection, after: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, msg_id, body, queued_at, items, packed FROM outbox WHERE id > ?1 \
         ORDER BY id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after, i64::try_from(limit).unwrap_or(i64::MAX)])?;
    let mut items = Vec::new();
    while items.len() < limit {
        let Some(row) = rows.next()? else {
            break;
        };
        let id: i64 = row.get(0)?;
        // A kind this build does not know (written by a newer one) stays
        // for that build to ship.
        let Some(kind) = OutboxKind::parse(&row.get::<_, String>(1)?) else {
            continue;
        };
        let queued_at: i64 = row.get(4)?;
        let item = |msg_id, body, ends_row| OutboxItem {
            id,
            kind,
            msg_id,
            body,
            queued_at,
            ends_row,
        };
        let msg_ids: String = row.get(2)?;
        // A STRICT column: a blob or NULL.
        let packed = match row.get_ref(6)? {
            rusqlite::types::ValueRef::Blob(b) => Some(b),
            _ => None,
        };
        let bodies = bodies_of(id, row.get(3)?, packed)?;
        // A row of one is taken as it is (an alert's body is not split).
        if row.get::<_, i64>(5)? <= 1 {
            items.push(item(msg_ids, bodies, true));
            continue;
        }
        let mut parts = msg_ids.split('\n').zip(bodies.split('\n')).peekable();
        while let Some((msg_id, body)) = parts.next() {
            items.push(item(
                msg_id.to_owned(),
                body.to_owned(),
                parts.peek().is_none(),
            ));
        }
    }
    Ok(items)
}

/// The state, with `depth` when this store knows it (else counted). The
/// oldest item is the first queued (by id: a lookup, not a scan).
fn state(conn: &Connection, depth: Option<u64>) -> Result<OutboxState, StoreError> {
    let depth = match depth {
        Some(d) => d,
        None => count(conn)?,
    };
    let oldest: Option<i64> = conn
        .query_row(
            "SELECT queued_at FROM outbox ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let dropped: Option<(i64, i64)> = conn
        .query_row(
            "SELECT dropped, dropped_events FROM outbox_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (dropped, dropped_events) = dropped.unwrap_or_default();
    Ok(OutboxState {
        depth,
        dropped: u64::try_from(dropped).unwrap_or(0),
        dropped_events: u64::try_from(dropped_events).unwrap_or(0),
        oldest_queued_at: oldest,
    })
}

impl Store {
    /// Queues every alert stored from now on in the outbox, which holds at
    /// most `bound` items (the oldest dropped past it; see the
    /// [module docs](self)); `None` queues nothing (no shipper is
    /// configured). Items already queued stay either way.
    #[must_use]
    pub fn with_outbox(mut self, bound: Option<usize>) -> Self {
        self.outbox = bound.map(|b| b.max(1));
        self
    }

    /// Queues, besides alerts and checkpoints, the events of `domains`
    /// stored from now on (process lifecycle events, connections, file
    /// events, performance samples: [`SHIPPABLE`]; others are ignored), in
    /// the transaction that stores them, under `event-<domain>-<event id>`.
    /// They are dropped first when the outbox is full (see the
    /// [module docs](self)). Needs [`with_outbox`](Self::with_outbox).
    #[must_use]
    pub fn with_shipped_events(mut self, domains: &[EventKind]) -> Self {
        self.shipped = domains
            .iter()
            .copied()
            .filter(|d| SHIPPABLE.contains(d))
            .collect();
        self
    }

    /// Up to `limit` items after the item `after` (0: from the start), in
    /// order.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn outbox_read(&self, after: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        read(self.conn(), after, limit)
    }

    /// Removes the rows `ids` (every item of each acknowledged by the
    /// broker: see [`OutboxItem::ends_row`]), in one transaction; ids no
    /// longer there are skipped. Returns the outbox's
    /// state after.
    ///
    /// # Errors
    /// SQLite errors; nothing is removed then.
    pub fn outbox_ack(&mut self, ids: &[i64]) -> Result<OutboxState, StoreError> {
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = 0u64;
        {
            // Acks come in order: one statement per run of consecutive ids.
            // Counted, then deleted: not `DELETE … RETURNING`, whose rows
            // SQLite gathers in a temporary table opened at every run.
            let mut count = tx.prepare_cached(
                "SELECT coalesce(sum(items), 0) FROM outbox WHERE id BETWEEN ?1 AND ?2",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id BETWEEN ?1 AND ?2")?;
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            let mut runs = sorted.iter().copied().peekable();
            while let Some(first) = runs.next() {
                let mut last = first;
                while runs.next_if(|&id| id == last + 1).is_some() {
                    last += 1;
                }
                let items: i64 = count.query_row([first, last], |r| r.get(0))?;
                if items > 0 {
                    delete.execute([first, last])?;
                    removed += u64::try_from(items).unwrap_or(0);
                }
            }
        }
        tx.commit()?;
        self.outbox_depth = self.outbox_depth.map(|d| d.saturating_sub(removed));
        self.outbox_state()
    }

    /// The id of the last item ever queued (0: none); ids only grow, so
    /// it moves exactly when an item is queued.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn outbox_last_id(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = self
            .conn()
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(seq.unwrap_or(0))
    }

    /// How full the outbox is.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn outbox_state(&self) -> Result<OutboxState, StoreError> {
        state(self.conn(), self.outbox_depth)
    }

    /// The outbox's depth before a write that may queue: this store's own
    /// count, or the table's counted once; `None` without an outbox.
    pub(crate) fn outbox_depth_now(&self) -> Result<Option<u64>, StoreError> {
        match (self.outbox, self.outbox_depth) {
            (None, _) => Ok(None),
            (Some(_), Some(d)) => Ok(Some(d)),
            (Some(_), None) => count(self.conn()).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{Alert, AlertProcess, Severity};

    fn alert(pid: u32) -> Alert {
        Alert {
            rule_id: "r".into(),
            rule_name: "rule".into(),
            severity: Severity::High,
            mitre: vec![],
            process: AlertProcess {
                pid,
                ..AlertProcess::host()
            },
            observed_at: 1,
            raised_at: 2,
            dedup_key: format!("r:{pid}"),
            file: None,
        }
    }

    #[test]
    fn nothing_is_queued_without_an_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.record_alert(&alert(1)).unwrap();
        assert_eq!(store.outbox_state().unwrap(), OutboxState::default());
    }

    #[test]
    fn alerts_are_queued_with_their_row_and_read_in_order_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().with_outbox(Some(100));
        let ids: Vec<i64> = (1..=5)
            .map(|p| store.record_alert(&alert(p)).unwrap())
            .collect();
        let first = store.outbox_read(0, 3).unwrap();
        assert_eq!(first.len(), 3);
        let rest = store.outbox_read(first[2].id, 3).unwrap();
        let all: Vec<OutboxItem> = first.into_iter().chain(rest).collect();
        let msg_ids: Vec<String> = all.iter().map(|i| i.msg_id.clone()).collect();
        let want: Vec<String> = ids.iter().map(|id| format!("alert-{id}")).collect();
        assert_eq!(msg_ids, want);
        let pids: Vec<u32> = all
            .iter()
            .map(|i| serde_json::from_str::<Alert>(&i.body).unwrap().process.pid)
            .collect();
        assert_eq!(pids, [1, 2, 3, 4, 5]);
        assert!(all.iter().all(|i| i.kind == OutboxKind::Alert));
        let state = store.outbox_ack(&[all[0].id, all[1].id]).unwrap();
        assert_eq!((state.depth, state.dropped), (3, 0));
        assert_eq!(state.oldest_queued_at, Some(all[2].queued_at));
        assert_eq!(store.outbox_read(0, 10).unwrap()[0].msg_id, want[2]);
    }

    #[test]
    fn an_ack_removes_exactly_its_ids_in_any_order_with_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().with_outbox(Some(100));
        let ids: Vec<i64> = (1..=7)
            .map(|p| store.record_alert(&alert(p)).unwrap())
            .collect();
        let items = store.outbox_read(0, 10).unwrap();
        let id = |i: usize| items[i].id;
        // Two runs and a lone one, out of order, one twice, one gone.
        let state = store
            .outbox_ack(&[id(5), id(1), id(0), id(3), id(1), 999])
            .unwrap();
        assert_eq!(state.depth, 3);
        let left: Vec<String> = store
            .outbox_read(0, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.msg_id)
            .collect();
        let want: Vec<String> = [2, 4, 6]
            .iter()
            .map(|&i| format!("alert-{}", ids[i]))
            .collect();
        assert_eq!(left, want);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_them_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().with_outbox(Some(3));
        for p in 1..=5 {
            store.record_alert(&alert(p)).unwrap();
        }
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let pids: Vec<u32> = store
            .outbox_read(0, 10)
            .unwrap()
            .iter()
            .map(|i| serde_json::from_str::<Alert>(&i.body).unwrap().process.pid)
            .collect();
        assert_eq!(pids, [3, 4, 5]);
        assert_eq!(store.outbox_state().unwrap().dropped, 2);
        // Every alert is still in the store: the outbox drops shipping only.
        assert_eq!(store.recent_alerts(10).unwrap().len(), 5);
        // A store opened again counts once, then keeps the depth itself.
        let mut store = store.with_outbox(Some(3));
        store.record_alert(&alert(6)).unwrap();
        let ids: Vec<i64> = store
            .outbox_read(0, 2)
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        let state = store.outbox_ack(&ids).unwrap();
        assert_eq!((state.depth, state.dropped), (1, 3));
        assert_eq!(count(store.conn()).unwrap(), 1);
    }

    #[test]
    fn a_checkpoint_is_queued_with_its_entry_after_the_alerts_before_it() {
        use crate::ledger::{Checkpoint, CheckpointEntry, Lost};
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let entry = CheckpointEntry {
            time: 7,
            lost: Lost::default(),
        };
        // Without an outbox, nothing is queued.
        store.append_checkpoint(&entry).unwrap();
        assert_eq!(store.outbox_state().unwrap().depth, 0);
        let mut store = store.with_outbox(Some(10));
        store.record_alert(&alert(1)).unwrap();
        let cp = store.append_checkpoint(&entry).unwrap();
        let items = store.outbox_read(0, 10).unwrap();
        let kinds: Vec<OutboxKind> = items.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, [OutboxKind::Alert, OutboxKind::Checkpoint]);
        assert_eq!(items[1].msg_id, format!("checkpoint-{}", cp.seq));
        let shipped: Checkpoint = serde_json::from_str(&items[1].body).unwrap();
        assert_eq!(shipped, cp);
        // It vouches for the chain as it is: the entry's own seq and hash.
        store.verify_ledger_anchored(&[shipped.anchor()]).unwrap();
    }

    #[test]
    fn a_failed_alert_write_queues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().with_outbox(Some(3));
        store.record_alert(&alert(1)).unwrap();
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER no_alerts BEFORE INSERT ON alerts BEGIN SELECT RAISE(ABORT, 'no'); END;",
            )
            .unwrap();
        assert!(store.record_alert(&alert(2)).is_err());
        // The depth the store keeps is the table's, the failed write not in it.
        assert_eq!(store.outbox_state().unwrap().depth, 1);
        assert_eq!(count(store.conn()).unwrap(), 1);
    }

    fn exec(pid: u32, seq: u64) -> collector_core::ProcessEvent {
        let mut e = collector_core::ProcessEvent::new(pid, "sh");
        e.event_type = collector_core::ProcessEventType::Exec;
        e.id = Some(collector_core::EventId::new(
            7,
            std::num::NonZeroU64::new(seq).unwrap(),
        ));
        e
    }

    fn connection(pid: u32) -> collector_core::NetworkEvent {
        let key =
            collector_core::ProcessKey::new(collector_core::BootId::from_bytes([1; 16]), pid, 9);
        collector_core::testing::loopback_connection(pid, key, 3, 8080)
    }

    /// A store in `dir` shipping process events through an outbox of
    /// `bound` items.
    fn shipping(dir: &tempfile::TempDir, bound: usize) -> Store {
        Store::open(dir.path())
            .unwrap()
            .with_outbox(Some(bound))
            .with_shipped_events(&[EventKind::Process])
    }

    /// The msg ids of what waits in the outbox, in order.
    fn msg_ids(store: &Store) -> Vec<String> {
        store
            .outbox_read(0, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.msg_id)
            .collect()
    }

    #[test]
    fn shipped_domains_queue_their_events_with_their_rows_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = shipping(&dir, 100);
        // A snapshot row is not a lifecycle event: not shipped.
        let mut seen = collector_core::ProcessEvent::new(3, "init");
        seen.event_type = collector_core::ProcessEventType::Snapshot;
        let events = [exec(1, 1), exec(2, 2), seen];
        store.record_events(&events).unwrap();
        store
            .write_timed(vec![connection(1)], std::time::Duration::from_secs(60))
            .unwrap();
        let items = store.outbox_read(0, 10).unwrap();
        let ids: Vec<&str> = items.iter().map(|i| i.msg_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "event-process-0000000000000007-1",
                "event-process-0000000000000007-2"
            ]
        );
        assert!(items
            .iter()
            .all(|i| i.kind == OutboxKind::Event(EventKind::Process)));
        let shipped: collector_core::ProcessEvent = serde_json::from_str(&items[1].body).unwrap();
        assert_eq!(shipped, events[1]);
        assert_eq!(store.outbox_state().unwrap().depth, 2);

        // Network too, once asked; an event without an id gets a digest of
        // its body, the same for the same event.
        let mut store = store.with_shipped_events(&[EventKind::Network]);
        store
            .write_timed(vec![connection(5)], std::time::Duration::from_secs(60))
            .unwrap();
        let again = store.outbox_read(0, 10).unwrap()[2].clone();
        store
            .write_timed(
                vec![serde_json::from_str::<collector_core::NetworkEvent>(&again.body).unwrap()],
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let items = store.outbox_read(0, 10).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[2].kind, OutboxKind::Event(EventKind::Network));
        assert!(
            items[2].msg_id.starts_with("event-network-b3"),
            "{}",
            items[2].msg_id
        );
        assert_eq!(items[2].msg_id, items[3].msg_id);
    }

    #[test]
    fn the_events_of_one_write_share_a_row_read_item_by_item_and_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = shipping(&dir, 100);
        store.record_alert(&alert(1)).unwrap();
        let events = [exec(1, 1), exec(2, 2), exec(3, 3)];
        store.record_events(&events).unwrap();
        store.record_alert(&alert(2)).unwrap();
        // A read of one gives the whole row after the first alert.
        let first = store.outbox_read(0, 1).unwrap();
        assert_eq!(first.len(), 1);
        let row = store.outbox_read(first[0].id, 1).unwrap();
        assert_eq!(row.len(), 3);
        assert!(row.iter().all(|i| i.id == row[0].id));
        let ends: Vec<bool> = row.iter().map(|i| i.ends_row).collect();
        assert_eq!(ends, [false, false, true]);
        let shipped: Vec<collector_core::ProcessEvent> = row
            .iter()
            .map(|i| serde_json::from_str(&i.body).unwrap())
            .collect();
        assert_eq!(shipped, events);
        assert_eq!(row[2].msg_id, "event-process-0000000000000007-3");
        let all = store.outbox_read(0, 10).unwrap();
        assert_eq!(all.len(), 5);
        assert!(all[0].ends_row && all[4].ends_row);
        assert_eq!(store.outbox_state().unwrap().depth, 5);
        // Removing the row removes its three items.
        let state = store.outbox_ack(&[row[0].id]).unwrap();
        assert_eq!(state.depth, 2);
        assert_eq!(count(store.conn()).unwrap(), 2);
        assert_eq!(msg_ids(&store), ["alert-1", "alert-2"]);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_items_of_a_row_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = shipping(&dir, 3);
        store.record_events(&[exec(1, 1), exec(2, 2)]).unwrap();
        store
            .record_events(&[exec(3, 3), exec(4, 4), exec(5, 5)])
            .unwrap();
        // Five items, three kept: the first row and the first of the second go.
        let want: Vec<String> = (3..=5)
            .map(|n| format!("event-process-0000000000000007-{n}"))
            .collect();
        assert_eq!(msg_ids(&store), want);
        let state = store.outbox_state().unwrap();
        assert_eq!((state.depth, state.dropped_events), (3, 2));
        let items = store.outbox_read(0, 10).unwrap();
        let pids: Vec<u32> = items
            .iter()
            .map(|i| {
                serde_json::from_str::<collector_core::ProcessEvent>(&i.body)
                    .unwrap()
                    .pid
            })
            .collect();
        assert_eq!(pids, [3, 4, 5]);
        // An alert: one more event of the row goes, the row keeps two.
        store.record_alert(&alert(1)).unwrap();
        assert_eq!(msg_ids(&store)[..2], want[1..]);
        drop(store);
        let state = Store::open(dir.path()).unwrap().outbox_state().unwrap();
        assert_eq!((state.depth, state.dropped_events), (3, 3));
    }

    /// The bodies of a row of many items are stored packed, smaller than
    /// their text, and read back item by item; a row queued before they
    /// were packed (its text in `body`) reads the same.
    #[test]
    fn a_row_of_many_items_is_stored_packed_and_a_row_of_text_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = shipping(&dir, 100);
        let events: Vec<_> = (1..=20).map(|n| exec(n, u64::from(n))).collect();
        store.record_events(&events).unwrap();
        let items = store.outbox_read(0, 100).unwrap();
        let bodies: Vec<&str> = items.iter().map(|i| i.body.as_str()).collect();
        let want: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        assert_eq!(bodies, want);
        let (body, packed): (String, Vec<u8>) = store
            .conn()
            .query_row("SELECT body, packed FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let text = want.join("\n");
        assert_eq!(body, "");
        assert!(
            packed.len() * 2 < text.len(),
            "{} bytes packed of {}",
            packed.len(),
            text.len()
        );
        // As schema 14 queued it.
        store
            .conn()
            .execute("UPDATE outbox SET body = ?1, packed = NULL", [&text])
            .unwrap();
        let again = store.outbox_read(0, 100).unwrap();
        assert_eq!(again, items);
    }

    /// A packed value the store did not write (a disk's or a hand's) is a
    /// clear error naming the row, not a panic, and not an allocation of
    /// the length it claims.
    #[test]
    fn a_packed_body_the_store_did_not_write_is_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = shipping(&dir, 100);
        store.record_events(&[exec(1, 1), exec(2, 2)]).unwrap();
        let id: i64 = store
            .conn()
            .query_row("SELECT id FROM outbox", [], |r| r.get(0))
            .unwrap();
        for bad in [
            &[0xff, 0xff, 0xff, 0x7f, 0x10, 0x41][..],
            &[0x01][..],
            &[0x40, 0, 0, 0, 0xf0, 0x41][..],
        ] {
            store
                .conn()
                .execute("UPDATE outbox SET packed = ?1", [bad])
                .unwrap();
            match store.outbox_read(0, 10) {
                Err(StoreError::Decode {
                    table,
                    column,
                    reason,
                }) => {
                    assert_eq!((table, column), ("outbox", "packed"));
                    assert!(reason.starts_with(&format!("row {id}:")), "{reason}");
                }
                other => panic!("{bad:?} read as {other:?}"),
            }
        }
    }

    #[test]
    fn a_full_outbox_drops_events_before_alerts_and_alerts_before_checkpoints() {
        use crate::ledger::{CheckpointEntry, Lost};
        let dir = tempfile::tempdir().unwrap();
        let mut store = shipping(&dir, 4);
        let entry = CheckpointEntry {
            time: 7,
            lost: Lost::default(),
        };
        store.append_checkpoint(&entry).unwrap();
        store.record_alert(&alert(1)).unwrap();
        store.record_events(&[exec(10, 1), exec(11, 2)]).unwrap();
        // Full (4). Two more events: the two older events go.
        store.record_events(&[exec(12, 3), exec(13, 4)]).unwrap();
        assert_eq!(
            msg_ids(&store),
            [
                "checkpoint-1",
                "alert-1",
                "event-process-0000000000000007-3",
                "event-process-0000000000000007-4"
            ]
        );
        let state = store.outbox_state().unwrap();
        assert_eq!((state.dropped_events, state.dropped), (2, 0));
        // Three alerts: the events go first, then the oldest alert.
        for p in 2..=4 {
            store.record_alert(&alert(p)).unwrap();
        }
        assert_eq!(
            msg_ids(&store),
            ["checkpoint-1", "alert-2", "alert-3", "alert-4"]
        );
        let state = store.outbox_state().unwrap();
        assert_eq!(
            (state.dropped_events, state.dropped, state.depth),
            (4, 1, 4)
        );
        // An event into an outbox full of alerts is itself the one dropped.
        store.record_events(&[exec(14, 5)]).unwrap();
        assert_eq!(
            msg_ids(&store),
            ["checkpoint-1", "alert-2", "alert-3", "alert-4"]
        );
        // Only alerts and checkpoints left: the checkpoint stays longest.
        for p in 5..=8 {
            store.record_alert(&alert(p)).unwrap();
        }
        assert_eq!(
            msg_ids(&store),
            ["checkpoint-1", "alert-6", "alert-7", "alert-8"]
        );
        // The counts survive a restart.
        drop(store);
        let state = Store::open(dir.path()).unwrap().outbox_state().unwrap();
        assert_eq!((state.dropped_events, state.dropped), (5, 5));
    }
}
