//! Where the CPU goes: the app, the client and the receiver each run on a tokio runtime of their
//! own (with `--shape processes`, the app and the receiver in a process of their own), so their CPU
//! time and context switches can be counted apart.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

/// The three parts of a run, each on a tokio runtime of its own so their CPU time can be told
/// apart (they still share the machine's cores).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    /// The app behind the layer, with its job tasks and the callbacks it sends.
    App,
    /// The load generator.
    Client,
    /// The callback receiver.
    Receiver,
}

const SIDES: [Side; 3] = [Side::App, Side::Client, Side::Receiver];

/// Thread ids of each side's runtime, and the runtimes of the client and the receiver.
static THREADS: [Mutex<Vec<u32>>; 3] = [
    Mutex::new(Vec::new()),
    Mutex::new(Vec::new()),
    Mutex::new(Vec::new()),
];
pub(crate) static RUNTIMES: OnceLock<[tokio::runtime::Runtime; 2]> = OnceLock::new();
/// With `--shape processes`: the process ids of the app and the receiver.
pub(crate) static REMOTE_PIDS: [OnceLock<u32>; 3] =
    [OnceLock::new(), OnceLock::new(), OnceLock::new()];
/// Connections each side's servers accepted (the receiver's count shows whether callbacks reuse
/// pooled connections).
pub(crate) static ACCEPTED: [AtomicU64; 3] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

impl Side {
    /// Also the name of its threads (for `perf report --comm`, `top -H`).
    fn name(self) -> &'static str {
        match self {
            Side::App => "app",
            Side::Client => "client",
            Side::Receiver => "receiver",
        }
    }

    fn threads(self) -> &'static Mutex<Vec<u32>> {
        &THREADS[self as usize]
    }

    pub(crate) fn runtime(self) -> tokio::runtime::Handle {
        match self {
            Side::App => tokio::runtime::Handle::current(),
            Side::Client | Side::Receiver => RUNTIMES.get().expect("runtimes")[self as usize - 1]
                .handle()
                .clone(),
        }
    }

    /// A multi-thread runtime whose threads register under this side.
    pub(crate) fn build_runtime(self, threads: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(self.name())
            .enable_all()
            .on_thread_start(move || {
                if let Some(tid) = thread_id() {
                    self.threads().lock().unwrap().push(tid);
                }
            })
            .build()
            .expect("runtime")
    }

    /// The `/proc` directories of this side's threads: its runtime's threads in this process, or
    /// every thread of its own process (`--shape processes`).
    fn tasks(self) -> Vec<PathBuf> {
        if let Some(pid) = REMOTE_PIDS[self as usize].get() {
            return std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|dir| dir.filter_map(|entry| Some(entry.ok()?.path())).collect())
                .unwrap_or_default();
        }
        self.threads()
            .lock()
            .unwrap()
            .iter()
            .map(|tid| PathBuf::from(format!("/proc/self/task/{tid}")))
            .collect()
    }

    /// CPU time this side's threads have had so far, in nanoseconds (Linux `schedstat`), and
    /// how often they were switched out (voluntarily or not).
    fn usage(self) -> (u64, u64) {
        self.tasks().iter().fold((0, 0), |(cpu, switches), task| {
            let ns = std::fs::read_to_string(task.join("schedstat"))
                .ok()
                .and_then(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            let switched: u64 = status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            (cpu + ns, switches + switched)
        })
    }
}

/// This thread's id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
fn thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time and context switches of every side, read together.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    cpu_ns: [u64; 3],
    switches: [u64; 3],
}

/// What each side spent per item (request or event).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PerItem {
    /// Microseconds of CPU, by [`Side`].
    pub(crate) cpu: [f64; 3],
    /// Context switches, by [`Side`].
    pub(crate) switches: [f64; 3],
}

impl Usage {
    pub(crate) fn now() -> Self {
        let read = SIDES.map(Side::usage);
        Self {
            cpu_ns: read.map(|(cpu, _)| cpu),
            switches: read.map(|(_, switches)| switches),
        }
    }

    /// Per item, for each side, since `earlier`.
    pub(crate) fn per_item_since(self, earlier: Usage, items: u64) -> PerItem {
        let items = items.max(1) as f64;
        let mut per = PerItem::default();
        for side in SIDES {
            let i = side as usize;
            per.cpu[i] = self.cpu_ns[i].saturating_sub(earlier.cpu_ns[i]) as f64 / 1e3 / items;
            per.switches[i] = self.switches[i].saturating_sub(earlier.switches[i]) as f64 / items;
        }
        per
    }
}
