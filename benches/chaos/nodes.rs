//! The app nodes: `durable_worker` processes (the example, release build), started, killed,
//! stopped and continued, their stderr read for their node id and their takeovers.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::now_ms;

/// What every node's log has said that the checker needs, and each slot's last lines.
#[derive(Default)]
pub(crate) struct Logs {
    /// (when, the node ids it names): "took over the work of nodes that stopped".
    pub(crate) takeovers: Vec<(u64, Vec<u64>)>,
    /// The last lines of each slot's nodes, for a report that went wrong.
    pub(crate) tails: Vec<VecDeque<String>>,
}

pub(crate) type SharedLogs = Arc<Mutex<Logs>>;

const TAIL: usize = 40;
const TOOK_OVER: &str = "took over the work of nodes that stopped";

/// Builds the example with the bench's own profile and features (so neither build undoes the
/// other's artifacts in `target/release`) and returns its path.
pub(crate) fn worker_binary() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // What `cargo bench` sets for this process is not the shell's environment: passed on, it
    // makes build scripts (ring's) run again and undo the bench's own artifacts.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
                "LD_LIBRARY_PATH",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let status = command
        .args([
            "build",
            "--profile",
            "bench",
            "--example",
            "durable_worker",
            "--all-features",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err("could not build the durable_worker example".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/release/deps/chaos-… → target/release/examples/durable_worker
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|release| release.join("examples").join("durable_worker"))
        .ok_or("no target folder")?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is missing after its build", path.display()))
    }
}

/// One node process; SIGKILLed and reaped when dropped.
pub(crate) struct Node {
    child: Child,
    pub(crate) address: String,
    /// Its id in the PostgreSQL store (none on redb).
    pub(crate) node_id: Option<u64>,
}

impl Node {
    /// Starts a node in `slot` with `args`; waits until it listens. Fails if it exits first
    /// (the database down, say): the caller tries again.
    pub(crate) fn start(
        binary: &PathBuf,
        args: &[String],
        slot: usize,
        logs: &SharedLogs,
    ) -> Result<Self, String> {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start the worker: {e}"))?;
        let (ids, id) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("node ") {
                    let _ = ids.send(id.trim().parse::<u64>().ok());
                }
                let mut logs = logs.lock().unwrap();
                if line.contains(TOOK_OVER) {
                    let nodes = takeover_nodes(&line);
                    logs.takeovers.push((now_ms(), nodes));
                }
                let tail = &mut logs.tails[slot];
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let Some(address) = line.trim().strip_prefix("listening on ").map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("node {slot} did not start: {:?}", line.trim()));
        };
        // The rest of its standard output (the shutdown report) is read and dropped.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stdout.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let node_id = if args.iter().any(|a| a == "--postgres") {
            id.recv_timeout(Duration::from_secs(5)).ok().flatten()
        } else {
            None
        };
        Ok(Node {
            child,
            address,
            node_id,
        })
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`) with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A stopped process takes SIGKILL too.
        self.kill();
    }
}

/// `nodes=[3, 4]` in a takeover line.
fn takeover_nodes(line: &str) -> Vec<u64> {
    line.split_once("nodes=[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
