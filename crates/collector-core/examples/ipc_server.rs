//! The reference README's "IPC Integration" example, with the smallest
//! changes that make it compile: `task.task_type()` (prost's getter) in the
//! match, `config` an `IpcServerConfig`, and a client that sends one task
//! and then stops the server so the example ends.

use collector_core::{
    CollectorIpcClient, CollectorIpcServer, IpcClientConfig, IpcServerConfig, SourceCaps,
};
use daemoneye_lib::proto::{DetectionResult, DetectionTask, ProcessRecord, ProtoTaskType};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("daemoneye-ipc-example-{}", std::process::id()));
    let config = IpcServerConfig::new(dir.join("collector.sock"));

    // Create IPC server with capabilities
    let capabilities = SourceCaps::PROCESS | SourceCaps::REALTIME | SourceCaps::SYSTEM_WIDE;
    let mut ipc_server = CollectorIpcServer::new(config, capabilities).await?;

    // A client (the agent's side): one task, then stop the server.
    let handle = ipc_server.handle();
    let path = ipc_server.socket_path().to_owned();
    let client = tokio::spawn(async move {
        let client = CollectorIpcClient::connect(IpcClientConfig::new(path)).await?;
        let task = DetectionTask::new("example-1", ProtoTaskType::EnumerateProcesses);
        let result = client.send_task(task).await?;
        tracing::info!(processes = result.processes.len(), "task answered");
        handle.shutdown();
        anyhow::Ok(result)
    });

    // Start IPC server for daemoneye-agent communication
    ipc_server
        .start(|task| {
            Box::pin(async move {
                // Process detection task
                match task.task_type() {
                    ProtoTaskType::EnumerateProcesses => {
                        // Enumerate processes and return results
                        let processes = vec![ProcessRecord {
                            pid: std::process::id(),
                            name: "example".to_owned(),
                            ..ProcessRecord::default()
                        }];
                        DetectionResult::success(&task.task_id, processes)
                    }
                    _ => DetectionResult::failure(&task.task_id, "Unsupported task type"),
                }
            })
        })
        .await?;

    let result = client.await??;
    assert!(result.success);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
