//! Network connections as rows: [`ConnectionRow`] is a [`NetworkEvent`] as
//! the columns of [`collector_core::vocabulary::NETWORK`], the one encoding
//! the store's `connections` table and the rules' table share
//! ([`insert_sql`]).

use collector_core::vocabulary::NETWORK;
use collector_core::{
    AddressFamily, CaptureTier, ConnectionChange, ConnectionDirection, ConnectionState,
    NetworkEvent,
};
use rusqlite::types::ToSql;

use crate::store::to_nanos;

/// One holder's view of a socket as the values of its columns, in
/// [`NETWORK`]'s order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRow {
    observed_at: i64,
    connection_id: i64,
    protocol: &'static str,
    family: Option<&'static str>,
    state: Option<&'static str>,
    direction: Option<&'static str>,
    change: Option<&'static str>,
    local_address: Option<String>,
    local_port: Option<u16>,
    remote_address: Option<String>,
    remote_port: Option<u16>,
    pid: Option<u32>,
    process_key: Option<String>,
    fd: Option<u32>,
    holders: Option<u32>,
    uid: Option<u32>,
    inode: Option<i64>,
    netns: Option<i64>,
    tier: Option<&'static str>,
    event_id: Option<String>,
    bytes_sent: Option<i64>,
    bytes_received: Option<i64>,
}

/// A kernel's 64-bit identifier (cookie, inode) as SQLite's integer: the
/// same bits, so one past `i64::MAX` stays distinct and round-trips.
fn bits(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// A count as SQLite's integer.
fn saturating(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl ConnectionRow {
    /// The row of `e`.
    pub fn new(e: &NetworkEvent) -> Self {
        Self {
            observed_at: to_nanos(e.timestamp),
            connection_id: bits(e.connection_id),
            protocol: e.protocol.as_str(),
            family: e.family.map(AddressFamily::as_str),
            state: e.state.map(ConnectionState::as_str),
            direction: e.direction.map(ConnectionDirection::as_str),
            change: e.change.map(ConnectionChange::as_str),
            local_address: e.source_addr.map(|a| a.to_string()),
            local_port: e.source_port,
            remote_address: e.dest_addr.map(|a| a.to_string()),
            remote_port: e.dest_port,
            pid: e.pid,
            process_key: e.process_key.map(|k| k.to_string()),
            fd: e.fd,
            holders: e.holders,
            uid: e.uid,
            inode: e.inode.map(bits),
            netns: e.netns.map(bits),
            tier: e.tier.map(CaptureTier::as_str),
            event_id: e.id.map(|id| id.to_string()),
            // Past i64::MAX (never, for bytes) the count saturates.
            bytes_sent: e.bytes_sent.map(saturating),
            bytes_received: e.bytes_received.map(saturating),
        }
    }

    /// Its values, in the columns' order (bind them to [`insert_sql`]).
    pub fn params(&self) -> [&dyn ToSql; 22] {
        [
            &self.observed_at,
            &self.connection_id,
            &self.protocol,
            &self.family,
            &self.state,
            &self.direction,
            &self.change,
            &self.local_address,
            &self.local_port,
            &self.remote_address,
            &self.remote_port,
            &self.pid,
            &self.process_key,
            &self.fd,
            &self.holders,
            &self.uid,
            &self.inode,
            &self.netns,
            &self.tier,
            &self.event_id,
            &self.bytes_sent,
            &self.bytes_received,
        ]
    }
}

impl crate::timed::TimedEvent for NetworkEvent {
    const TABLE: (&'static str, &'static [collector_core::vocabulary::Column]) =
        ("connections", NETWORK);

    fn insert(&self, insert: &mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<usize> {
        insert.execute(ConnectionRow::new(self).params().as_slice())
    }

    fn observed(&self) -> std::time::SystemTime {
        self.timestamp
    }
}

/// `INSERT INTO <table> (<every network column>) VALUES (?1, ...)`.
pub fn insert_sql(table: &str) -> String {
    crate::timed::insert_columns_sql(table, NETWORK)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, SystemTime};

    use collector_core::{BootId, ConnectionState, ProcessKey};
    use serde_json::json;

    use super::*;
    use crate::{Store, StoreWriter, WriterConfig};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// The stdin of pid 7, a shell, connected out to port 4444.
    fn shell_stdin(t: u64) -> NetworkEvent {
        let key = ProcessKey::new(BootId::from_bytes([5; 16]), 7, 42);
        NetworkEvent {
            connection_id: u64::MAX - 1,
            source_port: Some(50_000),
            family: Some(AddressFamily::Ipv4),
            state: Some(ConnectionState::Established),
            holders: Some(1),
            uid: Some(1000),
            inode: Some(99),
            netns: Some(4_026_531_833),
            tier: Some(CaptureTier::Polling),
            timestamp: at(t),
            ..collector_core::testing::loopback_connection(7, key, 0, 4444)
        }
    }

    #[test]
    fn the_table_has_the_vocabulary_columns_in_order() {
        crate::performance::tests::has_vocabulary_columns("connections", NETWORK);
        let sql = insert_sql("connections");
        assert!(sql.ends_with("?22)"), "{sql}");
    }

    #[test]
    fn a_connection_is_a_row_joinable_by_process_key_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let day = Duration::from_secs(86_400);
        let done = store.write_timed(vec![shell_stdin(1_000)], day).unwrap();
        assert_eq!((done.connections, done.connections_pruned), (1, 0));
        let ro = Store::open_read_only(dir.path()).unwrap();
        let r = ro
            .query(
                "SELECT connection_id, protocol, state, direction, change, remote_port, pid, \
                 process_key, fd FROM connections",
            )
            .unwrap();
        let key = ProcessKey::new(BootId::from_bytes([5; 16]), 7, 42).to_string();
        assert_eq!(
            r.rows,
            [vec![
                json!(-2),
                json!("tcp"),
                json!("established"),
                json!("outbound"),
                json!("opened"),
                json!(4444),
                json!(7),
                json!(key),
                json!(0),
            ]]
        );
        let done = store
            .write_timed(vec![shell_stdin(1_000 + 86_401)], day)
            .unwrap();
        assert_eq!(done.connections_pruned, 1);
        let n = ro.query("SELECT count(*) FROM connections").unwrap();
        assert_eq!(n.rows, [vec![json!(1)]]);
    }

    #[test]
    fn a_tcp_sockets_bytes_are_columns_and_a_udp_ones_null() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let tcp = NetworkEvent {
            bytes_sent: Some(100_001),
            bytes_received: Some(u64::MAX),
            ..shell_stdin(1_000)
        };
        let udp = NetworkEvent {
            protocol: collector_core::NetworkProtocol::Udp,
            ..shell_stdin(1_001)
        };
        let day = Duration::from_secs(86_400);
        store.write_timed(vec![tcp, udp], day).unwrap();
        let ro = Store::open_read_only(dir.path()).unwrap();
        let r = ro
            .query("SELECT protocol, bytes_sent, bytes_received FROM connections ORDER BY id")
            .unwrap();
        assert_eq!(
            r.rows,
            [
                vec![json!("tcp"), json!(100_001), json!(i64::MAX)],
                vec![json!("udp"), json!(null), json!(null)],
            ]
        );
    }

    #[test]
    fn the_store_retention_prunes_connections_below_its_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let long = Duration::from_secs(1 << 30);
        store
            .write_timed(vec![shell_stdin(1_000), shell_stdin(3_000)], long)
            .unwrap();
        let entry = crate::performance::tests::pruned_at_an_hour_past_2000(&mut store);
        assert_eq!(entry.connections, 1, "{entry:?}");
        let ro = Store::open_read_only(dir.path()).unwrap();
        let left = ro.query("SELECT observed_at FROM connections").unwrap();
        assert_eq!(left.rows, [vec![json!(to_nanos(at(3_000)))]]);
    }

    #[tokio::test]
    async fn the_writer_stores_connections_as_events_off_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            connections_retention: Duration::from_secs(10),
            ..WriterConfig::default()
        };
        let writer = StoreWriter::spawn(Store::open(dir.path()).unwrap(), config).unwrap();
        writer.connections(vec![shell_stdin(100)]).await;
        writer.connections(vec![shell_stdin(111)]).await;
        let stats = writer.close().await;
        assert_eq!(stats.events_written.get(), 2);
        assert_eq!(stats.connections_written.get(), 2);
        assert_eq!(stats.connections_pruned.get(), 1);
        assert_eq!(stats.lifecycle_events.get(), 0, "not on the ledger");
        let ro = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.verify_ledger().unwrap().entries, 0);
    }
}
