//! `store`: what the store keeps per short-lived process (a fork, an exec
//! and an exit): `store.bytes_per_exec`, the database file's growth over
//! the empty store's once the WAL is checkpointed, for events written
//! through the agent's `StoreWriter` (each batch with its ledger entry), and
//! the table or index that holds most of it.

use daemoneye_store::bench::bench_bytes_per_exec;

use crate::{report, report_f};

options! {
    /// Short-lived processes written (three lifecycle events each).
    execs: usize = 20_000,
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let f = crate::in_temp_dir("store", |dir| async move {
        Ok(bench_bytes_per_exec(&dir, o.execs).await?)
    })?;
    report_f("store.bytes_per_exec", f.bytes_per_exec(), 0, "bytes");
    for (name, bytes) in f.tables.iter().filter(|t| t.1 > 4_096) {
        report_f(
            &format!("store.bytes_per_exec.{name}"),
            *bytes as f64 / o.execs as f64,
            0,
            "bytes",
        );
    }
    report("store.execs", o.execs, "processes");
    Ok(())
}
