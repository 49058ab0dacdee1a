//! The glue SQLite calls to read the history tables ([`crate::tables`]):
//! rusqlite's virtual-table traits are `unsafe` to implement (SQLite
//! casts the structs below to its own), so this is the crate's only
//! `unsafe`, each with its `// SAFETY:`.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use collector_core::read;
use rusqlite::vtab::{
    eponymous_only_module, Context, Filters, IndexInfo, VTab, VTabConnection, VTabCursor,
};
use rusqlite::{ffi, Connection};

use crate::history::History;
use crate::tables::{self, Ancestry, ExecLineage, HistoryTable, Lifecycle, Lookup};

/// The history one engine's connections read.
pub(crate) type Shared = Arc<RwLock<History>>;

/// Makes `ancestry`, `exec_lineage` and `lifecycle_events` on `conn` read
/// `history`.
pub(crate) fn register(conn: &Connection, history: &Shared) -> rusqlite::Result<()> {
    fn one<T: HistoryTable>(conn: &Connection, history: &Shared) -> rusqlite::Result<()> {
        conn.create_module(
            T::NAME,
            eponymous_only_module::<Table<T>>(),
            Some(Arc::clone(history)),
        )
    }
    one::<Ancestry>(conn, history)?;
    one::<ExecLineage>(conn, history)?;
    one::<Lifecycle>(conn, history)
}

/// One history table on one connection.
#[repr(C)]
pub(crate) struct Table<T> {
    /// SQLite's part; first, as SQLite casts this struct to it.
    base: ffi::sqlite3_vtab,
    history: Shared,
    of: PhantomData<T>,
}

// SAFETY: `Table` is `repr(C)` with SQLite's `sqlite3_vtab` first, which is
// what the trait requires (SQLite and rusqlite cast a pointer to it to
// `*mut Table`); nothing else in it is seen by C.
unsafe impl<'vtab, T: HistoryTable> VTab<'vtab> for Table<T> {
    type Aux = Shared;
    type Cursor = Cursor<'vtab, T>;

    fn connect(
        _db: &mut VTabConnection,
        aux: Option<&Shared>,
        _args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        let history = aux
            .cloned()
            .ok_or_else(|| rusqlite::Error::ModuleError("no history to read".to_owned()))?;
        let table = Self {
            base: ffi::sqlite3_vtab::default(),
            history,
            of: PhantomData,
        };
        Ok((tables::declaration::<T>(), table))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<()> {
        tables::best_index::<T>(info);
        Ok(())
    }

    fn open(&'vtab mut self) -> rusqlite::Result<Cursor<'vtab, T>> {
        Ok(Cursor {
            base: ffi::sqlite3_vtab_cursor::default(),
            history: Arc::clone(&self.history),
            rows: Vec::new(),
            at: 0,
            of: PhantomData,
        })
    }
}

/// A scan or lookup of one history table. It keeps the rows' keys, not a
/// lock: the history is read-locked for each call only, so a statement
/// left open never holds the writer off.
#[repr(C)]
pub(crate) struct Cursor<'vtab, T: HistoryTable> {
    /// SQLite's part; first, as SQLite casts this struct to it.
    base: ffi::sqlite3_vtab_cursor,
    history: Shared,
    rows: Vec<T::Row>,
    at: usize,
    of: PhantomData<&'vtab T>,
}

// SAFETY: `Cursor` is `repr(C)` with SQLite's `sqlite3_vtab_cursor` first,
// which is what the trait requires; nothing else in it is seen by C.
unsafe impl<T: HistoryTable> VTabCursor for Cursor<'_, T> {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        let lookup = if idx_num < 0 {
            Lookup::Scan
        } else {
            Lookup::of(args.iter().next())
        };
        self.rows = T::rows(&read(&self.history), idx_num, lookup);
        self.at = 0;
        Ok(())
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.at += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.at >= self.rows.len()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        match self.rows.get(self.at) {
            Some(row) => T::column(&read(&self.history), row, i, ctx),
            None => ctx.set_result(&rusqlite::types::Null),
        }
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(i64::try_from(self.at).unwrap_or(i64::MAX))
    }
}
