//! procmond's answers to the agent's detection tasks, served over
//! [`collector_core::CollectorIpcServer`].
//!
//! [`TaskHandlers`] runs `ENUMERATE_PROCESSES` (with the task's
//! `ProcessFilter`), `MONITOR_PROCESS_TREE` (the filter's pids are the
//! roots), `CHECK_PROCESS_HASH` (a process's executable) and
//! `VERIFY_EXECUTABLE` (a file), reading `/proc` with [`ProcReader`] and
//! hashing with the cached, budgeted [`HashEngine`]. Other task types get a
//! failure result.
//!
//! ```no_run
//! use collector_core::{CollectorIpcServer, IpcServerConfig, SourceCaps};
//! use daemoneye_hasher::{HashEngine, HasherConfig};
//! use procmond::ipc::TaskHandlers;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let handlers = TaskHandlers::new(HashEngine::new(HasherConfig::default())?)?;
//! let config = IpcServerConfig::new("/run/daemoneye/procmond.sock");
//! let mut server = CollectorIpcServer::new(config, SourceCaps::PROCESS).await?;
//! server.start(handlers.into_handler()).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use collector_core::ipc::{process_to_record, TaskFuture};
use collector_core::{HashAlgorithm, ProcessEvent};
use daemoneye_hasher::HashEngine;
use daemoneye_lib::proto::{
    DetectionResult, DetectionTask, HashCheck, HashResult, ProcessFilter, ProcessRecord,
    ProtoTaskType,
};

use crate::snapshot::{ProcReader, ReadOptions, SetupError};

/// The task handlers of procmond.
#[derive(Clone)]
pub struct TaskHandlers {
    reader: Arc<ProcReader>,
    hasher: HashEngine,
    max_processes: usize,
}

collector_core::debug_fields!(TaskHandlers { max_processes });

impl TaskHandlers {
    /// Handlers reading the host's `/proc` and hashing with `hasher`.
    ///
    /// # Errors
    /// [`SetupError`] when `/proc` cannot be opened.
    pub fn new(hasher: HashEngine) -> Result<Self, SetupError> {
        Ok(Self {
            reader: Arc::new(ProcReader::new(ReadOptions::default())?),
            hasher,
            max_processes: 100_000,
        })
    }

    /// The most processes one enumeration reads.
    #[must_use]
    pub fn with_max_processes(mut self, max_processes: usize) -> Self {
        self.max_processes = max_processes;
        self
    }

    /// The handler for [`CollectorIpcServer::start`](collector_core::CollectorIpcServer::start).
    pub fn into_handler(self) -> impl Fn(DetectionTask) -> TaskFuture + Send + Sync + 'static {
        let this = Arc::new(self);
        move |task| {
            let this = this.clone();
            Box::pin(async move { this.handle(task).await })
        }
    }

    /// Runs one task.
    pub async fn handle(&self, task: DetectionTask) -> DetectionResult {
        let id = task.task_id.clone();
        match task.task_type() {
            ProtoTaskType::EnumerateProcesses => {
                let filter = task.process_filter.unwrap_or_default();
                match self.processes().await {
                    Ok(all) => DetectionResult::success(
                        &id,
                        all.iter()
                            .filter(|p| matches(&filter, p))
                            .map(process_to_record)
                            .collect(),
                    ),
                    Err(message) => DetectionResult::failure(&id, message),
                }
            }
            ProtoTaskType::MonitorProcessTree => {
                let roots = task.process_filter.map(|f| f.pids).unwrap_or_default();
                if roots.is_empty() {
                    return DetectionResult::failure(
                        &id,
                        "monitor_process_tree needs root pids in process_filter.pids",
                    );
                }
                match self.processes().await {
                    Ok(all) => DetectionResult::success(&id, tree(&all, &roots)),
                    Err(message) => DetectionResult::failure(&id, message),
                }
            }
            ProtoTaskType::CheckProcessHash | ProtoTaskType::VerifyExecutable => {
                let Some(check) = task.hash_check else {
                    return DetectionResult::failure(&id, "the task has no hash_check");
                };
                self.hash(&id, &check).await
            }
            other => DetectionResult::failure(
                &id,
                format!(
                    "task type {} is not served by procmond",
                    other.as_str_name()
                ),
            ),
        }
    }

    async fn processes(&self) -> Result<Vec<ProcessEvent>, String> {
        let reader = self.reader.clone();
        let max = self.max_processes;
        match tokio::task::spawn_blocking(move || reader.snapshot(max)).await {
            Ok(Ok(snap)) => Ok(snap.processes),
            Ok(Err(e)) => Err(format!("cannot read the process table: {e}")),
            Err(e) => Err(format!("process table reader failed: {e}")),
        }
    }

    async fn hash(&self, id: &str, check: &HashCheck) -> DetectionResult {
        let algorithm = match check.hash_algorithm.to_ascii_lowercase().as_str() {
            "" | "sha256" | "sha-256" => HashAlgorithm::Sha256,
            "blake3" => HashAlgorithm::Blake3,
            other => {
                return DetectionResult::failure(id, format!("unknown hash algorithm {other:?}"))
            }
        };
        let path = if check.executable_path.is_empty() {
            let Some(pid) = check.pid else {
                return DetectionResult::failure(id, "hash_check needs executable_path or pid");
            };
            let reader = self.reader.clone();
            match tokio::task::spawn_blocking(move || reader.read_process(pid)).await {
                Ok(Ok(p)) => match p.executable_path {
                    Some(path) => PathBuf::from(path),
                    None => {
                        return DetectionResult::failure(
                            id,
                            format!("the executable of pid {pid} is unreadable"),
                        )
                    }
                },
                Ok(Err(e)) => return DetectionResult::failure(id, format!("pid {pid}: {e}")),
                Err(e) => return DetectionResult::failure(id, format!("reader failed: {e}")),
            }
        } else {
            PathBuf::from(&check.executable_path)
        };
        let mut result = HashResult {
            algorithm: algorithm.as_str().to_owned(),
            file_path: path.display().to_string(),
            ..HashResult::default()
        };
        let outcome = self.hasher.hash_file(&path).await;
        let digest = match &outcome {
            Ok(o) => o.digest(algorithm).map(str::to_owned),
            Err(_) => None,
        };
        let Some(digest) = digest else {
            let message = match outcome {
                Err(e) => e.to_string(),
                Ok(_) => format!("this collector does not compute {}", algorithm.as_str()),
            };
            result.error_message = Some(message.clone());
            return DetectionResult {
                hash_result: Some(result),
                ..DetectionResult::failure(id, message)
            };
        };
        let matches = (!check.expected_hash.is_empty())
            .then(|| check.expected_hash.eq_ignore_ascii_case(&digest));
        result.success = matches != Some(false);
        result.matches = matches;
        result.hash_value = digest;
        DetectionResult {
            hash_result: Some(result),
            ..DetectionResult::success(id, Vec::new())
        }
    }
}

/// Whether `p` passes `f`: every set criterion must hold, any value of a list.
fn matches(f: &ProcessFilter, p: &ProcessEvent) -> bool {
    (f.process_names.is_empty() || f.process_names.contains(&p.name))
        && (f.pids.is_empty() || f.pids.contains(&p.pid))
        && f.executable_pattern.as_ref().is_none_or(|pat| {
            p.executable_path
                .as_deref()
                .is_some_and(|e| e.contains(pat.as_str()))
        })
        && (f.ppids.is_empty() || p.ppid.is_some_and(|pp| f.ppids.contains(&pp)))
        && (f.user_ids.is_empty() || p.user_id.is_some_and(|u| f.user_ids.contains(&u)))
}

/// The roots and every descendant, roots first, breadth first.
fn tree(all: &[ProcessEvent], roots: &[u32]) -> Vec<ProcessRecord> {
    let by_pid: HashMap<u32, &ProcessEvent> = all.iter().map(|p| (p.pid, p)).collect();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in all {
        if let Some(pp) = p.ppid {
            children.entry(pp).or_default().push(p.pid);
        }
    }
    let mut seen = BTreeSet::new();
    let mut queue: std::collections::VecDeque<u32> = roots.iter().copied().collect();
    let mut out = Vec::new();
    while let Some(pid) = queue.pop_front() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(p) = by_pid.get(&pid) {
            out.push(process_to_record(p));
        }
        if let Some(kids) = children.get(&pid) {
            queue.extend(kids.iter().copied());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, name: &str) -> ProcessEvent {
        ProcessEvent {
            ppid: Some(ppid),
            executable_path: Some(format!("/usr/bin/{name}")),
            user_id: Some(pid % 2),
            ..ProcessEvent::new(pid, name)
        }
    }

    #[test]
    fn filters_and_them_and_or_within() {
        let procs = [p(10, 1, "sshd"), p(11, 10, "bash"), p(12, 11, "vim")];
        let f = ProcessFilter {
            process_names: vec!["bash".into(), "vim".into()],
            user_ids: vec![1],
            ..ProcessFilter::default()
        };
        let got: Vec<u32> = procs
            .iter()
            .filter(|x| matches(&f, x))
            .map(|x| x.pid)
            .collect();
        assert_eq!(got, [11]);
        let f = ProcessFilter {
            executable_pattern: Some("ss".into()),
            ..ProcessFilter::default()
        };
        assert!(matches(&f, &procs[0]) && !matches(&f, &procs[1]));
        assert!(procs.iter().all(|x| matches(&ProcessFilter::default(), x)));
    }

    #[test]
    fn tree_walks_descendants_once() {
        let procs = [p(10, 1, "a"), p(11, 10, "b"), p(12, 11, "c"), p(13, 1, "d")];
        let pids: Vec<u32> = tree(&procs, &[10, 11]).iter().map(|r| r.pid).collect();
        assert_eq!(pids, [10, 11, 12]);
        assert!(tree(&procs, &[99]).is_empty());
    }
}
