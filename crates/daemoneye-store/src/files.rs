//! File events as rows: [`FileEventRow`] is a [`FilesystemEvent`] as the
//! stored columns of [`collector_core::vocabulary::FILE`], the one encoding
//! the store's `file_events` table and the rules' table share
//! ([`insert_sql`]; the rules' table adds the derived columns after them).

use std::time::SystemTime;

use collector_core::vocabulary::{Column, FILE};
use collector_core::{FileType, FilesystemEvent, HashAlgorithm};
use rusqlite::types::ToSql;

use crate::store::to_nanos;

/// The stored columns of [`FILE`]: a prefix of it (the derived ones come
/// last, which its test holds).
pub const STORED_COLUMNS: &[Column] = FILE.split_at(stored_len(FILE)).0;

const fn stored_len(list: &[Column]) -> usize {
    let mut n = 0;
    while n < list.len() && !list[n].derived {
        n += 1;
    }
    n
}

/// One file event as the values of its stored columns, in [`FILE`]'s
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEventRow {
    observed_at: i64,
    operation: &'static str,
    path: String,
    old_path: Option<String>,
    root: Option<String>,
    file_type: Option<&'static str>,
    size: Option<i64>,
    mode: Option<u32>,
    previous_mode: Option<u32>,
    owner_uid: Option<u32>,
    owner_gid: Option<u32>,
    hash: Option<String>,
    previous_hash: Option<String>,
    hash_algorithm: Option<&'static str>,
    pid: Option<u32>,
    process_key: Option<String>,
    event_id: Option<String>,
}

impl FileEventRow {
    /// The row of `e`.
    pub fn new(e: &FilesystemEvent) -> Self {
        Self {
            observed_at: to_nanos(e.timestamp),
            operation: e.operation.as_str(),
            path: e.path.clone(),
            old_path: e.old_path.clone(),
            root: e.root.clone(),
            file_type: e.file_type.map(FileType::as_str),
            // A size past i64::MAX is no real file's.
            size: e.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            mode: e.permissions,
            previous_mode: e.previous_permissions,
            owner_uid: e.uid,
            owner_gid: e.gid,
            hash: e.file_hash.clone(),
            previous_hash: e.previous_hash.clone(),
            hash_algorithm: e.hash_algorithm.map(HashAlgorithm::as_str),
            pid: e.pid,
            process_key: e.process_key.map(|k| k.to_string()),
            event_id: e.id.map(|id| id.to_string()),
        }
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The mode bits, when known.
    pub fn mode(&self) -> Option<u32> {
        self.mode
    }

    /// Its values, in the stored columns' order (bind them to
    /// [`insert_sql`]).
    pub fn params(&self) -> [&dyn ToSql; 17] {
        [
            &self.observed_at,
            &self.operation,
            &self.path,
            &self.old_path,
            &self.root,
            &self.file_type,
            &self.size,
            &self.mode,
            &self.previous_mode,
            &self.owner_uid,
            &self.owner_gid,
            &self.hash,
            &self.previous_hash,
            &self.hash_algorithm,
            &self.pid,
            &self.process_key,
            &self.event_id,
        ]
    }
}

impl crate::timed::TimedEvent for FilesystemEvent {
    const TABLE: (&'static str, &'static [Column]) = ("file_events", STORED_COLUMNS);

    fn insert(&self, insert: &mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<usize> {
        insert.execute(FileEventRow::new(self).params().as_slice())
    }

    fn observed(&self) -> SystemTime {
        self.timestamp
    }
}

/// `INSERT INTO <table> (<every stored file column>) VALUES (?1, ...)`.
pub fn insert_sql(table: &str) -> String {
    crate::timed::insert_columns_sql(table, STORED_COLUMNS)
}

/// `INSERT INTO <table> (<every file column, the derived ones after the
/// stored>) VALUES (?1, ...)`: the rules' table, whose rows are a
/// [`FileEventRow`]'s values and the derived ones.
pub fn insert_every_column_sql(table: &str) -> String {
    crate::timed::insert_columns_sql(table, FILE)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use collector_core::{BootId, FileOperation, ProcessKey};
    use serde_json::json;

    use super::*;
    use crate::{Store, StoreWriter, WriterConfig};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn key() -> ProcessKey {
        ProcessKey::new(BootId::from_bytes([5; 16]), 7, 42)
    }

    /// pid 7 writes a cron entry under a test root.
    fn cron_written(t: u64) -> FilesystemEvent {
        FilesystemEvent {
            root: Some("/tmp/root".into()),
            file_type: Some(FileType::Regular),
            pid: Some(7),
            process_key: Some(key()),
            size: Some(u64::MAX),
            permissions: Some(0o4755),
            previous_permissions: Some(0o644),
            uid: Some(0),
            gid: Some(0),
            file_hash: Some("ab".repeat(32)),
            hash_algorithm: Some(HashAlgorithm::Sha256),
            ..FilesystemEvent::new("/etc/cron.d/evil", FileOperation::CloseWrite, at(t))
        }
    }

    #[test]
    fn the_table_has_the_stored_vocabulary_columns_in_order() {
        crate::performance::tests::has_vocabulary_columns("file_events", STORED_COLUMNS);
        assert!(
            STORED_COLUMNS.len() < FILE.len(),
            "the derived ones are not stored"
        );
        assert!(insert_sql("file_events").ends_with("?17)"));
    }

    #[test]
    fn a_file_event_is_a_row_joinable_by_process_key_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let day = Duration::from_secs(86_400);
        let done = store.write_timed(vec![cron_written(1_000)], day).unwrap();
        assert_eq!((done.file_events, done.file_events_pruned), (1, 0));
        let ro = Store::open_read_only(dir.path()).unwrap();
        let r = ro
            .query(
                "SELECT operation, path, root, file_type, size, mode, previous_mode, owner_uid, \
                 pid, process_key, hash_algorithm FROM file_events",
            )
            .unwrap();
        assert_eq!(
            r.rows,
            [vec![
                json!("close_write"),
                json!("/etc/cron.d/evil"),
                json!("/tmp/root"),
                json!("regular"),
                json!(i64::MAX),
                json!(0o4755),
                json!(0o644),
                json!(0),
                json!(7),
                json!(key().to_string()),
                json!("sha256"),
            ]]
        );
        let done = store
            .write_timed(vec![cron_written(1_000 + 86_401)], day)
            .unwrap();
        assert_eq!(done.file_events_pruned, 1);
    }

    #[test]
    fn the_store_retention_prunes_file_events_below_its_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let long = Duration::from_secs(1 << 30);
        store
            .write_timed(vec![cron_written(1_000), cron_written(3_000)], long)
            .unwrap();
        let entry = crate::performance::tests::pruned_at_an_hour_past_2000(&mut store);
        assert_eq!(entry.file_events, 1, "{entry:?}");
    }

    #[tokio::test]
    async fn the_writer_stores_file_events_off_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            file_events_retention: Duration::from_secs(10),
            ..WriterConfig::default()
        };
        let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap(), config).unwrap();
        writer.file_events(vec![cron_written(100)]).await;
        writer.file_events(Vec::new()).await;
        writer.file_events(vec![cron_written(111)]).await;
        let stats = writer.close().await;
        assert_eq!(stats.events_written.get(), 2);
        assert_eq!(stats.file_events_written.get(), 2);
        assert_eq!(stats.file_events_pruned.get(), 1);
        assert_eq!(stats.lifecycle_events.get(), 0, "not on the ledger");
        let ro = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.verify_ledger().unwrap().entries, 0);
    }
}
