//! Performance samples as rows: [`PerformanceRow`] is a
//! [`PerformanceEvent`] as the columns of
//! [`collector_core::vocabulary::PERFORMANCE`], the one encoding the store's
//! `performance` table and the rules' table share ([`insert_sql`]).

use std::time::SystemTime;

use collector_core::vocabulary::{Column, PERFORMANCE};
use collector_core::PerformanceEvent;
use rusqlite::types::ToSql;

use crate::store::to_nanos;

/// One sample as the values of its columns, in
/// [`PERFORMANCE`]'s order.
#[derive(Debug, Clone, PartialEq)]
pub struct PerformanceRow {
    event_id: Option<String>,
    observed_at: i64,
    metric: &'static str,
    unit: &'static str,
    value: f64,
    subject_kind: &'static str,
    subject_name: Option<String>,
    pid: Option<u32>,
    process_key: Option<String>,
    anomaly: Option<&'static str>,
    anomaly_threshold: Option<f64>,
    anomaly_duration_ms: Option<i64>,
}

impl PerformanceRow {
    /// The row of `e`.
    pub fn new(e: &PerformanceEvent) -> Self {
        let a = e.anomaly.as_deref();
        Self {
            event_id: e.id.map(|id| id.to_string()),
            observed_at: to_nanos(e.timestamp),
            metric: e.metric.as_str(),
            unit: e.unit().as_str(),
            value: e.value,
            subject_kind: e.subject.kind().as_str(),
            subject_name: e.subject.name().map(std::borrow::Cow::into_owned),
            pid: e.pid(),
            process_key: e.process_key().map(|k| k.to_string()),
            anomaly: a.map(|a| a.kind.as_str()),
            anomaly_threshold: a.map(|a| a.threshold),
            anomaly_duration_ms: a
                .map(|a| i64::try_from(a.duration.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Its values, in the columns' order (bind them to [`insert_sql`]).
    pub fn params(&self) -> [&dyn ToSql; 12] {
        [
            &self.event_id,
            &self.observed_at,
            &self.metric,
            &self.unit,
            &self.value,
            &self.subject_kind,
            &self.subject_name,
            &self.pid,
            &self.process_key,
            &self.anomaly,
            &self.anomaly_threshold,
            &self.anomaly_duration_ms,
        ]
    }
}

/// `INSERT INTO <table> (<every performance column>) VALUES (?1, ...)`.
pub fn insert_sql(table: &str) -> String {
    crate::timed::insert_columns_sql(table, PERFORMANCE)
}

impl crate::timed::TimedEvent for PerformanceEvent {
    const TABLE: (&'static str, &'static [Column]) = ("performance", PERFORMANCE);

    fn insert(&self, insert: &mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<usize> {
        insert.execute(PerformanceRow::new(self).params().as_slice())
    }

    fn observed(&self) -> SystemTime {
        self.timestamp
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use collector_core::vocabulary::SqlType;
    use collector_core::{
        BootId, PerformanceAnomaly, PerformanceAnomalyKind, PerformanceMetric, PerformanceSubject,
        ProcessKey,
    };
    use serde_json::json;

    use super::*;
    use crate::{Store, StoreWriter, WriterConfig};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn busy(pid: u32, t: u64) -> PerformanceEvent {
        let key = ProcessKey::new(BootId::from_bytes([5; 16]), pid, 42);
        PerformanceEvent::new(
            PerformanceMetric::ProcessCpu,
            99.0,
            PerformanceSubject::Process {
                pid,
                process_key: Some(key),
            },
            at(t),
        )
        .with_anomaly(PerformanceAnomaly {
            kind: PerformanceAnomalyKind::SustainedCpu,
            threshold: 90.0,
            duration: Duration::from_secs(61),
        })
    }

    fn load(t: u64) -> PerformanceEvent {
        PerformanceEvent::new(
            PerformanceMetric::LoadAvg1,
            0.5,
            PerformanceSubject::Host,
            at(t),
        )
    }

    #[test]
    fn the_table_has_the_vocabulary_columns_in_order() {
        has_vocabulary_columns("performance", PERFORMANCE);
    }

    /// Checkpoints at 1,500 s and 2,000 s (unix time), then a prune to an
    /// hour's age at 2,000 s + an hour: what was observed before 2,000 s
    /// goes.
    pub(crate) fn pruned_at_an_hour_past_2000(store: &mut Store) -> crate::ledger::PruneEntry {
        use crate::ledger::{CheckpointEntry, Lost};
        for t in [1_500, 2_000] {
            let time = to_nanos(at(t));
            store
                .append_entry("checkpoint", |_| CheckpointEntry {
                    time,
                    lost: Lost::default(),
                })
                .unwrap();
        }
        let retention = crate::Retention {
            max_age: Some(Duration::from_secs(3_600)),
            max_bytes: None,
        };
        store
            .prune(&retention, to_nanos(at(2_000 + 3_600)))
            .unwrap()
            .unwrap()
    }

    /// The store's `table` has `columns` (stored, none boolean) in order,
    /// after its `id`.
    pub(crate) fn has_vocabulary_columns(table: &str, columns: &[Column]) {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = rusqlite::Connection::open(dir.path().join(crate::FILE)).unwrap();
        let mut got = crate::table_columns(&conn, table).unwrap();
        got.retain(|(name, _)| name != "id");
        let want: Vec<_> = columns
            .iter()
            .map(|c| {
                assert!(!c.derived, "{} is derived", c.name);
                assert_ne!(c.ty, SqlType::Boolean);
                (c.name.to_owned(), c.ty.sqlite().to_owned())
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn samples_and_anomalies_are_rows_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let day = Duration::from_secs(86_400);
        let done = store
            .write_timed(vec![load(1_000), busy(7, 1_000)], day)
            .unwrap();
        assert_eq!((done.performance, done.pruned), (2, 0));
        let ro = Store::open_read_only(dir.path()).unwrap();
        let r = ro
            .query(
                "SELECT metric, unit, subject_kind, pid, process_key, anomaly, anomaly_threshold, \
                 anomaly_duration_ms FROM performance WHERE anomaly IS NOT NULL",
            )
            .unwrap();
        let key = ProcessKey::new(BootId::from_bytes([5; 16]), 7, 42).to_string();
        assert_eq!(
            r.rows,
            [vec![
                json!("process.cpu_percent"),
                json!("percent"),
                json!("process"),
                json!(7),
                json!(key),
                json!("sustained_cpu"),
                json!(90.0),
                json!(61_000),
            ]]
        );
        // A day and a second later, the first two are past the retention.
        let done = store.write_timed(vec![load(1_000 + 86_401)], day).unwrap();
        assert_eq!(done.pruned, 2);
        let n = ro.query("SELECT count(*) FROM performance").unwrap();
        assert_eq!(n.rows, [vec![json!(1)]]);
    }

    #[tokio::test]
    async fn the_writer_stores_samples_as_events_and_prunes_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            performance_retention: Duration::from_secs(10),
            ..WriterConfig::default()
        };
        let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap(), config).unwrap();
        writer.performance(vec![load(100), busy(9, 100)]).await;
        writer.performance(vec![load(111)]).await;
        let stats = writer.close().await;
        assert_eq!(stats.events_accepted.get(), 3);
        assert_eq!(stats.events_written.get(), 3);
        assert_eq!(stats.performance_samples.get(), 3);
        assert_eq!(stats.performance_pruned.get(), 2);
        assert_eq!(stats.lifecycle_events.get(), 0, "not on the ledger");
        let ro = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.verify_ledger().unwrap().entries, 0);
    }

    #[test]
    fn the_insert_names_every_vocabulary_column() {
        let sql = insert_sql("performance");
        for c in PERFORMANCE {
            assert!(sql.contains(c.name), "{sql}");
        }
        assert!(sql.ends_with("?12)"), "{sql}");
    }
}
