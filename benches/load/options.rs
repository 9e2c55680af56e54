//! The harness's options: `--name value` arguments or `LOAD_*` environment variables (arguments
//! win), and the command line that reproduces a run.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Memory,
    Redb,
    Postgres,
}

/// Which signatures each callback carries (the receiver checks the Elements one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signatures {
    /// `Elements-Webhook-Signature` and the Standard Webhooks headers: the costly case.
    Both,
    /// `Elements-Webhook-Signature` only.
    Elements,
}

/// Where the app, the load client and the receiver run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One process, a tokio runtime each.
    InProcess,
    /// Three processes (the app and the receiver started by the harness, which is the client):
    /// the shape of a deployment.
    Processes,
}

/// What a process started by the harness is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    App,
    Receiver,
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) shape: Shape,
    /// Requests (sync) and events (async) per second, spread over the connections; 0: as many
    /// as the app takes.
    pub(crate) rate: u64,
    pub(crate) role: Option<Role>,
    pub(crate) concurrency: usize,
    pub(crate) rounds: u64,
    pub(crate) duration_secs: u64,
    pub(crate) payload_bytes: usize,
    pub(crate) pending_events: u64,
    pub(crate) store: StoreKind,
    pub(crate) signatures: Signatures,
    pub(crate) threads: usize,
    pub(crate) max_requests: u64,
    pub(crate) drain_secs: u64,
    pub(crate) memory_secs: u64,
}

const USAGE: &str =
    "usage: cargo bench --bench load -- [--shape in-process|processes] [--rate R] [--concurrency N] [--rounds R] [--duration-secs D] \
[--payload-bytes P] [--pending-events K] [--store memory|redb|postgres] [--signatures both|elements] \
[--threads T] [--max-requests M] [--drain-secs S] [--memory-secs S]   (or env LOAD_CONCURRENCY, \
LOAD_DURATION_SECS, …)";

impl Options {
    pub(crate) fn parse() -> Result<Self, String> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut values: HashMap<String, String> = HashMap::new();
        for (name, env) in [
            ("shape", "LOAD_SHAPE"),
            ("rate", "LOAD_RATE"),
            ("concurrency", "LOAD_CONCURRENCY"),
            ("rounds", "LOAD_ROUNDS"),
            ("duration-secs", "LOAD_DURATION_SECS"),
            ("payload-bytes", "LOAD_PAYLOAD_BYTES"),
            ("pending-events", "LOAD_PENDING_EVENTS"),
            ("store", "LOAD_STORE"),
            ("signatures", "LOAD_SIGNATURES"),
            ("threads", "LOAD_THREADS"),
            ("max-requests", "LOAD_MAX_REQUESTS"),
            ("drain-secs", "LOAD_DRAIN_SECS"),
            ("memory-secs", "LOAD_MEMORY_SECS"),
        ] {
            if let Ok(value) = std::env::var(env) {
                values.insert(name.to_owned(), value);
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `cargo bench` appends `--bench`; a harness that is not criterion ignores it.
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                return Err(USAGE.to_owned());
            }
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
            };
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value\n{USAGE}"))?;
                    (name.to_owned(), value)
                }
            };
            values.insert(name, value);
        }
        let store =
            match values.remove("store").as_deref() {
                None | Some("memory") => StoreKind::Memory,
                Some("redb") if cfg!(feature = "redb") => StoreKind::Redb,
                Some("redb") => return Err(
                    "--store redb needs the redb feature: cargo bench --features redb --bench load"
                        .to_owned(),
                ),
                Some("postgres") if cfg!(feature = "postgres") => StoreKind::Postgres,
                Some("postgres") => return Err(
                    "--store postgres needs the postgres feature (and DATABASE_URL, or the local \
                     server): cargo bench --features postgres --bench load"
                        .to_owned(),
                ),
                Some(other) => {
                    return Err(format!("--store: memory, redb or postgres, not {other:?}"))
                }
            };
        let shape = match values.remove("shape").as_deref() {
            None | Some("in-process") => Shape::InProcess,
            Some("processes") => Shape::Processes,
            Some(other) => return Err(format!("--shape: in-process or processes, not {other:?}")),
        };
        let role = match values.remove("role").as_deref() {
            None => None,
            Some("app") => Some(Role::App),
            Some("receiver") => Some(Role::Receiver),
            Some(other) => return Err(format!("--role: app or receiver, not {other:?}")),
        };
        let signatures = match values.remove("signatures").as_deref() {
            None | Some("both") => Signatures::Both,
            Some("elements") => Signatures::Elements,
            Some(other) => return Err(format!("--signatures: both or elements, not {other:?}")),
        };
        let mut take = |name: &str, default: u64| -> Result<u64, String> {
            match values.remove(name) {
                None => Ok(default),
                Some(text) => text
                    .parse()
                    .map_err(|_| format!("--{name}: not a number: {text:?}")),
            }
        };
        let options = Options {
            shape,
            rate: take("rate", 0)?,
            role,
            concurrency: take("concurrency", 32)?.max(1) as usize,
            rounds: take("rounds", 3)?.max(1),
            duration_secs: take("duration-secs", 4)?.max(1),
            payload_bytes: take("payload-bytes", 1024)? as usize,
            pending_events: take("pending-events", 100_000)?,
            threads: take("threads", cpus as u64)?.max(1) as usize,
            max_requests: take("max-requests", 10_000_000)?.max(1),
            drain_secs: take("drain-secs", 10)?,
            memory_secs: take("memory-secs", 45)?.max(1),
            store,
            signatures,
        };
        if let Some(unknown) = values.keys().next() {
            return Err(format!("unknown option --{unknown}\n{USAGE}"));
        }
        Ok(options)
    }

    /// The command that reproduces this run, every option spelled out.
    pub(crate) fn command_line(&self) -> String {
        let features = match self.store {
            StoreKind::Memory => "",
            StoreKind::Redb => " --features redb",
            StoreKind::Postgres => " --features postgres",
        };
        let store = match self.store {
            StoreKind::Memory => "memory",
            StoreKind::Redb => "redb",
            StoreKind::Postgres => "postgres",
        };
        let signatures = match self.signatures {
            Signatures::Both => "both",
            Signatures::Elements => "elements",
        };
        let shape = match self.shape {
            Shape::InProcess => "in-process",
            Shape::Processes => "processes",
        };
        format!(
            "cargo bench{features} --bench load -- --shape {shape} --rate {} --concurrency {} \
             --rounds {} --duration-secs {} \
             --payload-bytes {} --pending-events {} --store {store} --signatures {signatures} \
             --threads {} --max-requests {} --drain-secs {} --memory-secs {}",
            self.rate,
            self.concurrency,
            self.rounds,
            self.duration_secs,
            self.payload_bytes,
            self.pending_events,
            self.threads,
            self.max_requests,
            self.drain_secs,
            self.memory_secs,
        )
    }
}
