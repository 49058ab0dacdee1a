//! A real `nats-server` with JetStream, started by a test on a free
//! loopback port with a store directory of the test's. Shared with
//! daemoneye-cli's tests (`#[path]`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A `nats-server -js` on a loopback port with its store in a directory;
/// killed when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    /// The server's name and cluster arguments, when one of a cluster.
    cluster: Vec<String>,
    /// Its name (`n<i>` in a cluster).
    pub name: String,
    /// Its JetStream store limit (`max_file_store`): by default more than
    /// the streams the tests make reserve (their files hold only what is
    /// written).
    pub max_file_store: String,
    /// More of its configuration file (authorization, an operator...):
    /// set before it starts; a second `-c` would replace the store limit.
    pub config: String,
}

/// A free loopback port (free when asked).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nats {
    /// A free port and a store directory for a server not started yet;
    /// `None` (saying why) when there is no `nats-server` to run.
    pub fn prepare(dir: &Path) -> Option<Self> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: no nats-server on PATH (Debian: apt-get install -y nats-server)");
            return None;
        }
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).unwrap();
        Some(Self {
            child: None,
            port: free_port(),
            store,
            cluster: Vec::new(),
            name: "n0".to_owned(),
            max_file_store: "1TB".to_owned(),
            config: String::new(),
        })
    }

    /// `n` servers, not started yet, of one JetStream cluster on loopback
    /// ports (each routed to the others, its store in `dir/n<i>`); `None`
    /// as [`prepare`](Self::prepare).
    pub fn cluster(dir: &Path, n: usize) -> Option<Vec<Self>> {
        let mut nodes: Vec<Self> = (0..n)
            .map(|i| Self::prepare(&dir.join(format!("n{i}"))))
            .collect::<Option<_>>()?;
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            let others: Vec<String> = (routes.iter().enumerate())
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            node.name = format!("n{i}");
            node.cluster = vec![
                "--name".to_owned(),
                node.name.clone(),
                "--cluster_name".to_owned(),
                "daemoneye-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".to_owned(),
                others.join(","),
            ];
        }
        Some(nodes)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and returns once it says it is ready.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// As [`start`](Self::start), with more arguments.
    pub fn start_with(&mut self, more: &[&str]) {
        // JetStream's store limit is otherwise 75 % of the disk's free
        // space, and a stream reserves its `max_bytes` (the sink's default,
        // 10 GiB) when it is made: on a fuller disk the stream is refused.
        // A set limit makes the tests independent of the disk they run on.
        let conf = self.store.with_extension("conf");
        std::fs::write(
            &conf,
            format!(
                "{}\njetstream {{ max_file_store: {} }}\n",
                self.config, self.max_file_store
            ),
        )
        .unwrap();
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(&self.cluster)
            .args(more)
            .arg("-sd")
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(Ok(()));
                } else {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
            let _ = tx.send(Err(log));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            other => panic!("nats-server did not start: {other:?}"),
        }
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL: nothing flushed on the way out) and
    /// reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message of the stream, in order: (subject, msg id, body).
    pub async fn messages(&self) -> Vec<(String, String, Value)> {
        self.messages_with(async_nats::ConnectOptions::new()).await
    }

    /// As [`messages`](Self::messages), connecting with `options` (TLS).
    pub async fn messages_with(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Vec<(String, String, Value)> {
        let client = options.connect(self.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("DAEMONEYE").await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let m = stream.get_raw_message(seq).await.unwrap();
            let id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((
                m.subject.to_string(),
                id,
                serde_json::from_slice(&m.payload).unwrap(),
            ));
        }
        assert_eq!(out.len() as u64, state.messages);
        out
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
