//! A private PostgreSQL cluster: `initdb` into a temporary folder, `pg_ctl` on a free port, run
//! as the `postgres` user when the harness runs as root (PostgreSQL refuses root). Stopped (fast
//! or immediate) and started again by the faults; stopped for good, its folder removed, on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::schedule::StopMode;

pub(crate) struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    /// The temporary folder holding `data`, the socket and the server log.
    folder: PathBuf,
    pub(crate) port: u16,
    /// Whether commands run as `postgres` (the harness is root).
    as_postgres: bool,
}

/// The PostgreSQL binaries: `pg_config --bindir`, else the usual Debian paths.
fn binaries() -> Result<PathBuf, String> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    for version in ["17", "16", "15", "14"] {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(
        "no PostgreSQL server binaries (initdb, pg_ctl): install PostgreSQL (15 or later) or put \
         its bin folder where `pg_config --bindir` says; the harness runs a private cluster"
            .into(),
    )
}

/// A port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

impl Cluster {
    /// Creates and starts the cluster in a folder under the system's temporary folder.
    pub(crate) fn start(folder: &Path) -> Result<Self, String> {
        let bin = binaries()?;
        let as_postgres = running_as_root();
        let data = folder.join("pgdata");
        std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(folder)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(
                    "chown postgres of the cluster's folder failed (no postgres user?)".into(),
                );
            }
        }
        let cluster = Cluster {
            bin,
            data,
            folder: folder.to_owned(),
            port: free_port(),
            as_postgres,
        };
        let init = cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        if !init.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        cluster.up()?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`, or through another port (a proxy).
    pub(crate) fn url(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))
    }

    /// Starts the server and waits until it takes connections (`pg_ctl start -w`).
    pub(crate) fn up(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.folder.display()
        );
        let log = self.folder.join("server.log");
        let output = self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
            ],
        )?;
        if output.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            Err(format!(
                "pg_ctl start failed: {}{}\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Stops the server (`pg_ctl stop -m fast|immediate`) and waits until it has.
    pub(crate) fn down(&self, mode: StopMode) -> Result<(), String> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let output = self.run(
            "pg_ctl",
            &["stop", "-w", "-m", mode, "-D", &self.data.to_string_lossy()],
        )?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl stop -m {mode} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Runs `sql` with psql over TCP (not through a proxy); its rows, `|`-separated.
    pub(crate) fn query(&self, sql: &str) -> Result<Vec<String>, String> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(self.port))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "immediate",
                "-D",
                &self.data.to_string_lossy(),
            ],
        );
    }
}

/// Whether this process runs as root (then PostgreSQL runs as `postgres`).
fn running_as_root() -> bool {
    // `id -u` rather than libc::geteuid: no unsafe code for one number.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}
