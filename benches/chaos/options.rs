//! The harness's options and the command line that replays a run.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// How long the load runs (faults happen inside it); the quiet period comes after.
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
    /// Async requests per second, round-robin over the nodes.
    pub(crate) rate: u64,
    pub(crate) short: bool,
    /// One node on `RedbStore`, killed and restarted every few seconds; no PostgreSQL.
    pub(crate) redb: bool,
}

const USAGE: &str =
    "usage: cargo bench --bench chaos -- [--duration 300s] [--seed N] [--rate 500] \
[--short] [--redb]";

/// `300s`, `5m` or `300`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    number
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * unit))
        .map_err(|_| format!("--duration: 300s, 5m or 300, not {text:?}"))
}

impl Options {
    pub(crate) fn parse() -> Result<Self, String> {
        let mut options = Options {
            duration: Duration::from_secs(300),
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000),
            rate: 500,
            short: false,
            redb: false,
        };
        let mut duration = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match name.as_str() {
                // `cargo bench` appends `--bench`; a harness that is not criterion ignores it.
                "--bench" => {}
                "--short" => options.short = true,
                "--redb" => options.redb = true,
                "--duration" => duration = Some(parse_duration(&value()?)?),
                "--seed" => {
                    options.seed = value()?.parse().map_err(|_| "--seed: a number")?;
                }
                "--rate" => {
                    options.rate = value()?.parse().map_err(|_| "--rate: a number")?;
                    if options.rate == 0 {
                        return Err("--rate: at least 1".into());
                    }
                }
                "--help" | "-h" => return Err(USAGE.into()),
                other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
            }
        }
        options.duration = match (duration, options.short) {
            (Some(duration), _) => duration,
            (None, true) => Duration::from_secs(40),
            (None, false) => Duration::from_secs(300),
        };
        if options.duration < Duration::from_secs(30) {
            return Err("--duration: at least 30s (room for one fault of each kind)".into());
        }
        Ok(options)
    }

    /// The command that replays this run (the same schedule; timings differ).
    pub(crate) fn command_line(&self) -> String {
        format!(
            "cargo bench --bench chaos -- --duration {}s --seed {} --rate {}{}{}",
            self.duration.as_secs(),
            self.seed,
            self.rate,
            if self.short { " --short" } else { "" },
            if self.redb { " --redb" } else { "" },
        )
    }
}
