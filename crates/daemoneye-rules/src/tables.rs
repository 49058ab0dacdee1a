//! The rules' history tables, `ancestry`, `exec_lineage` and
//! `lifecycle_events`: SQLite virtual tables read straight from
//! [`History`] (the glue SQLite calls is in [`crate::sys`]).
//!
//! Each table answers an equality on its indexed columns from the
//! history's own indexes (an `IN` list is one lookup per value) and scans
//! otherwise. SQLite still checks every constraint on the rows returned,
//! so a lookup may return more than asked (a value of another type scans)
//! but never less.

use std::ffi::{c_int, CStr};

use collector_core::vocabulary::{Column, ANCESTRY, EXEC_LINEAGE, LIFECYCLE};
use rusqlite::types::{Null, ValueRef};
use rusqlite::vtab::{Context, IndexConstraintOp, IndexInfo};

use crate::history::{AncestryBy, History, Key, LifecycleBy, LineageBy};

/// What a lookup was given: an equality's value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup<'a> {
    /// No usable equality: every row.
    Scan,
    /// `= NULL`: no row.
    Nothing,
    /// A text value.
    Text(&'a str),
    /// An integer value.
    Int(i64),
}

impl<'a> Lookup<'a> {
    pub(crate) fn of(value: Option<ValueRef<'a>>) -> Self {
        match value {
            None | Some(ValueRef::Real(_) | ValueRef::Blob(_)) => Self::Scan,
            Some(ValueRef::Null) => Self::Nothing,
            Some(ValueRef::Integer(i)) => Self::Int(i),
            Some(ValueRef::Text(t)) => std::str::from_utf8(t).map_or(Self::Scan, Self::Text),
        }
    }
}

/// One history table as SQLite sees it.
pub(crate) trait HistoryTable: 'static {
    /// Its name in rules.
    const NAME: &'static CStr;
    /// Its columns, in order.
    const COLUMNS: &'static [Column];
    /// The columns an equality is answered from an index on, preferred
    /// first.
    const INDEXED: &'static [c_int];
    /// What a cursor keeps of one row.
    type Row;
    /// The rows with `column = lookup` (every row for [`Lookup::Scan`]).
    fn rows(h: &History, column: c_int, lookup: Lookup<'_>) -> Vec<Self::Row>;
    /// Column `i` of `row` into `ctx`.
    fn column(h: &History, row: &Self::Row, i: c_int, ctx: &mut Context) -> rusqlite::Result<()>;
}

/// `list` as the column definitions of a `CREATE TABLE` (`name TYPE, …`).
pub(crate) fn definitions(list: &[Column]) -> String {
    let columns: Vec<String> = list
        .iter()
        .map(|c| format!("{} {}", c.name, c.ty.sqlite()))
        .collect();
    columns.join(", ")
}

/// The `CREATE TABLE` SQLite is told the table has.
pub(crate) fn declaration<T: HistoryTable>() -> String {
    format!("CREATE TABLE x({})", definitions(T::COLUMNS))
}

/// The plan: one equality on the most preferred indexed column there is
/// (its value is the cursor's one argument, `idx_num` its column), else a
/// scan (`idx_num` -1).
pub(crate) fn best_index<T: HistoryTable>(info: &mut IndexInfo) {
    let mut best: Option<(usize, usize, c_int)> = None;
    for (i, c) in info.constraints().enumerate() {
        if !c.is_usable() || c.operator() != IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ {
            continue;
        }
        if let Some(rank) = T::INDEXED.iter().position(|&col| col == c.column()) {
            if best.is_none_or(|(r, _, _)| rank < r) {
                best = Some((rank, i, c.column()));
            }
        }
    }
    match best {
        Some((_, i, column)) => {
            let mut usage = info.constraint_usage(i);
            usage.set_argv_index(1);
            usage.set_omit(false);
            info.set_idx_num(column);
            info.set_estimated_cost(10.0);
            info.set_estimated_rows(10);
        }
        None => {
            info.set_idx_num(-1);
            info.set_estimated_cost(1_000_000.0);
            info.set_estimated_rows(100_000);
        }
    }
}

fn set<T: rusqlite::ToSql>(ctx: &mut Context, value: &T) -> rusqlite::Result<()> {
    ctx.set_result(value)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `ancestry`: a row per process and remembered ancestor.
pub(crate) struct Ancestry;

impl HistoryTable for Ancestry {
    const NAME: &'static CStr = c"ancestry";
    const COLUMNS: &'static [Column] = ANCESTRY;
    // process_key, ancestor_name, ancestor_key
    const INDEXED: &'static [c_int] = &[0, 5, 2];
    type Row = (Key, usize, Key);

    fn rows(h: &History, column: c_int, lookup: Lookup<'_>) -> Vec<Self::Row> {
        match (column, lookup) {
            (_, Lookup::Nothing) => Vec::new(),
            (0, Lookup::Text(k)) => h.ancestry(AncestryBy::Key(k)),
            (2, Lookup::Text(k)) => h.ancestry(AncestryBy::AncestorKey(k)),
            (5, Lookup::Text(n)) => h.ancestry(AncestryBy::AncestorName(n)),
            _ => h.ancestry(AncestryBy::All),
        }
    }

    fn column(h: &History, row: &Self::Row, i: c_int, ctx: &mut Context) -> rusqlite::Result<()> {
        let (key, depth, ancestor) = row;
        let node = h.node(ancestor);
        let last = node.and_then(|n| n.last());
        match i {
            0 => set(ctx, &&**key),
            1 => set(ctx, &count(*depth)),
            2 => set(ctx, &&**ancestor),
            3 => set(ctx, &node.map(|n| n.pid)),
            4 => set(ctx, &last.and_then(|l| l.exe.as_deref())),
            5 => set(ctx, &last.map(|l| l.name.as_str())),
            6 => set(ctx, &last.map(|l| l.cmdline.as_str())),
            7 => set(ctx, &node.map(|n| n.exited)),
            _ => set(ctx, &Null),
        }
    }
}

/// `exec_lineage`: a row per image of each process that ran more than one.
pub(crate) struct ExecLineage;

impl HistoryTable for ExecLineage {
    const NAME: &'static CStr = c"exec_lineage";
    const COLUMNS: &'static [Column] = EXEC_LINEAGE;
    // process_key, name
    const INDEXED: &'static [c_int] = &[0, 4];
    type Row = (Key, usize);

    fn rows(h: &History, column: c_int, lookup: Lookup<'_>) -> Vec<Self::Row> {
        match (column, lookup) {
            (_, Lookup::Nothing) => Vec::new(),
            (0, Lookup::Text(k)) => h.lineage(LineageBy::Key(k)),
            (4, Lookup::Text(n)) => h.lineage(LineageBy::Name(n)),
            _ => h.lineage(LineageBy::All),
        }
    }

    fn column(h: &History, row: &Self::Row, i: c_int, ctx: &mut Context) -> rusqlite::Result<()> {
        let (key, seq) = row;
        let node = h.node(key);
        let image = node.and_then(|n| n.images.get(*seq));
        match i {
            0 => set(ctx, &&**key),
            1 => set(ctx, &count(*seq)),
            2 => set(ctx, &node.map(|n| n.pid)),
            3 => set(ctx, &image.and_then(|m| m.exe.as_deref())),
            4 => set(ctx, &image.map(|m| m.name.as_str())),
            5 => set(ctx, &image.map(|m| m.cmdline.as_str())),
            6 => set(ctx, &image.and_then(|m| m.observed_at)),
            _ => set(ctx, &Null),
        }
    }
}

/// `lifecycle_events`: the forks, execs and exits of the window.
pub(crate) struct Lifecycle;

impl HistoryTable for Lifecycle {
    const NAME: &'static CStr = c"lifecycle_events";
    const COLUMNS: &'static [Column] = LIFECYCLE;
    // process_key, ppid
    const INDEXED: &'static [c_int] = &[3, 5];
    type Row = i64;

    fn rows(h: &History, column: c_int, lookup: Lookup<'_>) -> Vec<Self::Row> {
        match (column, lookup) {
            (_, Lookup::Nothing) => Vec::new(),
            (3, Lookup::Text(k)) => h.lifecycle(LifecycleBy::Key(k)),
            (5, Lookup::Int(p)) => u32::try_from(p)
                .map(|p| h.lifecycle(LifecycleBy::Ppid(p)))
                .unwrap_or_default(),
            _ => h.lifecycle(LifecycleBy::All),
        }
    }

    fn column(h: &History, seq: &Self::Row, i: c_int, ctx: &mut Context) -> rusqlite::Result<()> {
        let Some(r) = h.lifecycle_row(*seq) else {
            return set(ctx, &Null);
        };
        match i {
            0 => set(ctx, &r.seq),
            1 => set(ctx, &r.observed_at),
            2 => set(ctx, &r.event_type),
            3 => set(ctx, &&*r.process_key),
            4 => set(ctx, &r.pid),
            5 => set(ctx, &r.ppid),
            6 => set(ctx, &r.image.name.as_str()),
            7 => set(ctx, &r.image.exe.as_deref()),
            8 => set(ctx, &r.image.cmdline.as_str()),
            _ => set(ctx, &Null),
        }
    }
}
