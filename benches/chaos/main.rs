//! Chaos harness (not criterion): a cluster of app nodes on PostgreSQL, under load, broken on a
//! seeded schedule, and a checker that reads the history afterwards (docs/chaos.md).
//!
//! ```sh
//! cargo bench --bench chaos                           # 300 s at 500 requests/s, a fresh seed
//! cargo bench --bench chaos -- --duration 120s --seed 7 --rate 200
//! cargo bench --bench chaos -- --short                # about a minute (CI)
//! cargo bench --bench chaos -- --redb                 # one node on RedbStore, killed every few s
//! ```
//!
//! Everything runs on 127.0.0.1 and is started here: a private PostgreSQL cluster (`initdb` into
//! a temporary folder, `pg_ctl` on a free port, as the `postgres` user when run as root), three
//! `durable_worker` processes (the example, built in release mode by this harness) on one schema
//! with a 2 s lease, each behind a TCP proxy to the cluster that can cut it off, a misbehaving
//! receiver and a paced load client. The faults and the receiver's bad spells follow a schedule
//! drawn from `--seed` and printed first, so a run can be replayed. After the load, requests
//! without a receipt are sent again under their `Idempotency-Key` (what a real client does);
//! then, once every notification has arrived (or a bounded quiet period ends), the checker reads
//! the client's and the receiver's records and the database, prints its report and exits
//! non-zero if a guarantee broke, naming the events concerned.

mod checker;
mod client;
mod cluster;
mod nodes;
mod options;
mod proxy;
mod receiver;
mod run;
mod schedule;

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use crate::options::Options;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the harness started: the one clock every record is written in.
pub(crate) fn now_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn main() -> ExitCode {
    now_ms();
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let held = runtime.block_on(run::run(options));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match held {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chaos: {error}");
            ExitCode::from(2)
        }
    }
}
