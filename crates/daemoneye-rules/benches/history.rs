//! Criterion bench of the history the rules read, for regression tracking:
//! a spawn storm as the detector follows it (each short-lived process
//! forked, exec'd and exited, under a shell six levels below init), in a
//! history kept at its default bounds, so that every new process also
//! evicts an old one. The project's own figures come from
//! `daemoneye-bench overhead`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use collector_core::{BootId, ProcessEvent, ProcessEventType, ProcessKey};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use daemoneye_rules::history::History;

const BATCH: u32 = 1_000;
const DEPTH: u32 = 6;

fn event(kind: ProcessEventType, pid: u32, ppid: u32, name: &str) -> ProcessEvent {
    let mut e = ProcessEvent::new(pid, name);
    e.event_type = kind;
    e.ppid = Some(ppid);
    e.executable_path = Some(format!("/usr/bin/{name}"));
    e.command_line = vec![name.to_owned(), "-c".to_owned(), "true".to_owned()];
    e.process_key = Some(ProcessKey::new(
        BootId::from_bytes([7; 16]),
        pid,
        u64::from(pid) * 3,
    ));
    e.timestamp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    e
}

fn storm(c: &mut Criterion) {
    let mut history = History::new();
    // init, sshd, sshd, bash, bash, python: the spawner's ancestry.
    let ancestry: Vec<ProcessEvent> = (1..=DEPTH)
        .map(|pid| event(ProcessEventType::Snapshot, pid, pid - 1, "ancestor"))
        .collect();
    history.observe_batch(&ancestry);
    let mut next = 1_000;
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.bench_function("spawn_storm_fork_exec_exit", |b| {
        // The events are made outside the timing: only following them counts.
        b.iter_batched(
            || {
                let mut batch = Vec::with_capacity(3 * BATCH as usize);
                for _ in 0..BATCH {
                    next += 1;
                    batch.push(event(ProcessEventType::Fork, next, DEPTH, "python3"));
                    batch.push(event(ProcessEventType::Exec, next, DEPTH, "true"));
                    batch.push(event(ProcessEventType::Exit, next, DEPTH, "true"));
                }
                batch
            },
            |batch| history.observe_batch(&batch),
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, storm);
criterion_main!(benches);
