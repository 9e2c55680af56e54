//! One run: everything started, the load and the three fault lanes side by side, requests
//! without a receipt sent again, the quiet period, the status reads, then the checker.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::checker::{self, Database, History};
use crate::client::{Answer, LoadClient, Sent, StatusRead};
use crate::cluster::Cluster;
use crate::nodes::{worker_binary, Logs, Node, SharedLogs};
use crate::now_ms;
use crate::options::Options;
use crate::proxy::DbProxy;
use crate::receiver::Receiver;
use crate::schedule::{Fault, Kind, Schedule, LEASE};

/// Each delivery attempt's bound on the nodes; the receiver's slow answers take longer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The nodes' retry schedule: retries every 2 s for about 80 s, so that no bad spell, restart
/// or takeover spends a notification's budget, and the quiet period is short.
fn retry_schedule() -> String {
    let mut delays = vec!["200".to_owned(), "1000".to_owned()];
    delays.extend(std::iter::repeat_n("2000".to_owned(), 40));
    delays.join(",")
}
const SCHEMA: &str = "chaos";

/// A fault as it happened.
#[derive(Debug, Clone)]
pub(crate) struct Done {
    pub(crate) kind: Kind,
    pub(crate) node: usize,
    pub(crate) start_ms: u64,
    /// When it ended: the node restarted or continued, the cut healed, PostgreSQL ready again.
    pub(crate) end_ms: u64,
    /// The PostgreSQL node id of the node it struck, then.
    pub(crate) node_id: Option<u64>,
}

/// The temporary folder, removed when the run ends however it ends (dropped last).
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything a lane needs to strike.
#[derive(Clone)]
struct Cast {
    binary: PathBuf,
    args: Arc<Vec<Vec<String>>>,
    nodes: Arc<Mutex<Vec<Node>>>,
    addresses: Arc<RwLock<Vec<String>>>,
    logs: SharedLogs,
    proxies: Arc<Vec<DbProxy>>,
    cluster: Option<Arc<Cluster>>,
    receiver: Receiver,
}

pub(crate) async fn run(options: Options) -> Result<bool, String> {
    let postgres = !options.redb;
    let node_count = if postgres { 3 } else { 1 };
    println!("reproduce: {}", options.command_line());
    let schedule = Schedule::draw(
        options.seed,
        options.duration,
        node_count,
        postgres,
        options.short,
    );
    print_schedule(&options, &schedule, postgres);

    let folder = Folder(std::env::temp_dir().join(format!(
        "tower-async-request-chaos-{}-{}",
        std::process::id(),
        options.seed
    )));
    let binary = tokio::task::spawn_blocking(worker_binary)
        .await
        .map_err(|e| e.to_string())??;
    let cluster = if postgres {
        let path = folder.0.clone();
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(&path))
            .await
            .map_err(|e| e.to_string())??;
        Some(Arc::new(cluster))
    } else {
        std::fs::create_dir_all(&folder.0).map_err(|e| e.to_string())?;
        None
    };
    let receiver = Receiver::start(ATTEMPT_TIMEOUT + Duration::from_millis(700)).await;
    let mut proxies = Vec::new();
    if let Some(cluster) = &cluster {
        for _ in 0..node_count {
            proxies.push(DbProxy::start(cluster.port).await);
        }
    }
    let args = node_args(&options, &folder.0, cluster.as_deref(), &proxies, &receiver);
    let logs: SharedLogs = Arc::new(Mutex::new(Logs {
        tails: vec![Default::default(); node_count],
        ..Default::default()
    }));
    let mut nodes = Vec::new();
    for (slot, args) in args.iter().enumerate() {
        nodes.push(Node::start(&binary, args, slot, &logs)?);
    }
    let addresses = Arc::new(RwLock::new(
        nodes.iter().map(|n| n.address.clone()).collect(),
    ));
    println!(
        "started: PostgreSQL {}, {} node(s) {:?}, receiver {}",
        cluster
            .as_ref()
            .map_or("none (redb)".to_owned(), |c| format!("on port {}", c.port)),
        node_count,
        addresses.read().unwrap(),
        receiver.url
    );
    let cast = Cast {
        binary,
        args: Arc::new(args),
        nodes: Arc::new(Mutex::new(nodes)),
        addresses: addresses.clone(),
        logs: logs.clone(),
        proxies: Arc::new(proxies),
        cluster: cluster.clone(),
        receiver: receiver.clone(),
    };

    // The load and the three lanes, side by side.
    let client = LoadClient::new(addresses.clone());
    let load_start = now_ms();
    let until = load_start + options.duration.as_millis() as u64;
    let lanes = [
        schedule.nodes.clone(),
        schedule.database.clone(),
        schedule.receiver.clone(),
    ]
    .map(|lane| tokio::spawn(strike(cast.clone(), lane, load_start)));
    client.run(options.rate, until, options.seed).await;
    let mut done = Vec::new();
    for lane in lanes {
        done.extend(lane.await.map_err(|e| e.to_string())??);
    }
    done.sort_by_key(|d| d.start_ms);
    let sent = std::mem::take(&mut *client.sent.lock().unwrap());
    println!(
        "load: {} requests in {:.1} s ({:.0}/s), {} receipts",
        sent.len(),
        options.duration.as_secs_f64(),
        sent.len() as f64 / options.duration.as_secs_f64(),
        sent.iter()
            .filter(|s| matches!(s.answer, Answer::Receipt { .. }))
            .count()
    );

    // What a client does with a request it has no receipt for: the same request again, under
    // the same key, until it gets a definite answer.
    let resent = resend(&client, &sent, node_count).await;

    // The quiet period: until every receipt's notification was taken (and, on PostgreSQL,
    // nothing is left unfinished), at most QUIET.
    let receipts: HashSet<u64> = sent
        .iter()
        .chain(&resent)
        .filter_map(|s| match s.answer {
            Answer::Receipt { event_id, .. } => Some(event_id),
            _ => None,
        })
        .collect();
    let quiet_start = now_ms();
    let quiet_limit = Duration::from_secs(if options.short { 60 } else { 120 });
    loop {
        let taken: HashSet<u64> = receiver
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|hit| hit.answered.taken())
            .filter_map(|hit| checker::event_id_of(&hit.body))
            .collect();
        let waiting = receipts.iter().filter(|id| !taken.contains(id)).count();
        // Rows not yet delivered, less those the receiver took already (a delivery's write
        // lost to an immediate stop stays pending for good; the checker tells those apart).
        let unfinished = match &cluster {
            Some(cluster) => unfinished(cluster).await.map_or(u64::MAX, |ids| {
                ids.iter().filter(|id| !taken.contains(id)).count() as u64
            }),
            None => 0,
        };
        if waiting == 0 && unfinished == 0 {
            break;
        }
        if now_ms() - quiet_start > quiet_limit.as_millis() as u64 {
            println!(
                "quiet period: {waiting} receipts without a notification and {unfinished} \
                 events unfinished (not taken) after {quiet_limit:?}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A delivery's write the store could not take is tried again at most 5 s apart: give the
    // rows the receiver took a little longer to say so (those lost to an immediate stop never do).
    if let Some(cluster) = &cluster {
        let settle = now_ms() + 8_000;
        while now_ms() < settle && unfinished(cluster).await.is_none_or(|ids| !ids.is_empty()) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let quiet_ms = now_ms() - quiet_start;
    println!("quiet period: {:.1} s", quiet_ms as f64 / 1000.0);

    let status_reads = read_statuses(&client, &sent, &resent, options.seed).await;
    let database = match &cluster {
        Some(cluster) => {
            let cluster = cluster.clone();
            Some(
                tokio::task::spawn_blocking(move || read_database(&cluster))
                    .await
                    .map_err(|e| e.to_string())??,
            )
        }
        None => None,
    };
    let history = History {
        sent,
        resent,
        hits: std::mem::take(&mut *receiver.hits.lock().unwrap()),
        faults: done,
        takeovers: logs.lock().unwrap().takeovers.clone(),
        database,
        status_reads,
        load_ms: options.duration.as_millis() as u64,
        load_start_ms: load_start,
        quiet_ms,
        rate: options.rate,
        node_count,
    };
    let held = checker::check(&history);
    if !held {
        let logs = logs.lock().unwrap();
        for (slot, tail) in logs.tails.iter().enumerate() {
            println!("--- the last lines of node {slot}'s log");
            for line in tail {
                println!("{line}");
            }
        }
    }
    // Nodes first (they hold connections), then the proxies' runtime, the cluster, the folder.
    let nodes = std::mem::take(&mut *cast.nodes.lock().unwrap());
    tokio::task::spawn_blocking(move || drop(nodes))
        .await
        .map_err(|e| e.to_string())?;
    drop(cast);
    drop(cluster);
    drop(folder);
    Ok(held)
}

fn print_schedule(options: &Options, schedule: &Schedule, postgres: bool) {
    println!(
        "seed {}: {} s of load at {}/s; {} fault(s) on the schedule:",
        options.seed,
        options.duration.as_secs(),
        options.rate,
        schedule.all().len()
    );
    for fault in schedule.all() {
        println!("  {fault}");
    }
    let missing: Vec<&str> = Kind::ALL
        .iter()
        .filter(|kind| postgres || matches!(kind, Kind::Kill | Kind::Receiver(_)))
        .filter(|kind| !schedule.all().iter().any(|f| f.kind.name() == kind.name()))
        .map(|kind| kind.name())
        .collect();
    if !missing.is_empty() {
        println!("  (no room in this run for: {})", missing.join(", "));
    }
}

fn node_args(
    options: &Options,
    folder: &Path,
    cluster: Option<&Cluster>,
    proxies: &[DbProxy],
    receiver: &Receiver,
) -> Vec<Vec<String>> {
    let common = [
        "--callback".to_owned(),
        receiver.url.clone(),
        "--retry-ms".to_owned(),
        retry_schedule(),
        "--attempt-timeout-ms".to_owned(),
        ATTEMPT_TIMEOUT.as_millis().to_string(),
        "--log".to_owned(),
        "info".to_owned(),
    ];
    match cluster {
        Some(cluster) => proxies
            .iter()
            .map(|proxy| {
                let mut args = vec![
                    "--postgres".to_owned(),
                    cluster.url(proxy.port),
                    "--schema".to_owned(),
                    SCHEMA.to_owned(),
                    "--lease-ms".to_owned(),
                    LEASE.as_millis().to_string(),
                ];
                args.extend(common.iter().cloned());
                args
            })
            .collect(),
        None => {
            let _ = options;
            let mut args = vec![
                "--db".to_owned(),
                folder.join("node.redb").to_string_lossy().into_owned(),
            ];
            args.extend(common.iter().cloned());
            vec![args]
        }
    }
}

/// Runs one lane's faults at their times; what happened.
async fn strike(cast: Cast, lane: Vec<Fault>, load_start: u64) -> Result<Vec<Done>, String> {
    let mut done = Vec::new();
    for fault in lane {
        let at = load_start + fault.at.as_millis() as u64;
        let now = now_ms();
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
        let start_ms = now_ms();
        let node_id = cast
            .nodes
            .lock()
            .unwrap()
            .get(fault.node)
            .and_then(|n| n.node_id);
        match fault.kind {
            Kind::Kill => {
                let nodes = cast.nodes.clone();
                let slot = fault.node;
                tokio::task::spawn_blocking(move || nodes.lock().unwrap()[slot].kill())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(fault.length).await;
                restart(&cast, fault.node).await?;
            }
            Kind::Stop => {
                cast.nodes.lock().unwrap()[fault.node].signal("STOP");
                tokio::time::sleep(fault.length).await;
                cast.nodes.lock().unwrap()[fault.node].signal("CONT");
            }
            Kind::Cut(how) => {
                cast.proxies[fault.node].cut(how);
                tokio::time::sleep(fault.length).await;
                cast.proxies[fault.node].heal();
            }
            Kind::Restart(mode) => {
                let cluster = cast.cluster.clone().expect("a cluster");
                tokio::task::spawn_blocking(move || cluster.down(mode))
                    .await
                    .map_err(|e| e.to_string())??;
                tokio::time::sleep(fault.length).await;
                let cluster = cast.cluster.clone().expect("a cluster");
                tokio::task::spawn_blocking(move || cluster.up())
                    .await
                    .map_err(|e| e.to_string())??;
            }
            Kind::Receiver(spell) => {
                cast.receiver.set(Some(spell));
                tokio::time::sleep(fault.length).await;
                cast.receiver.set(None);
            }
        }
        done.push(Done {
            kind: fault.kind,
            node: fault.node,
            start_ms,
            end_ms: now_ms(),
            node_id,
        });
    }
    Ok(done)
}

/// Starts the node in `slot` again; tries for a minute (the database may be down meanwhile).
async fn restart(cast: &Cast, slot: usize) -> Result<(), String> {
    let deadline = now_ms() + 60_000;
    loop {
        let (binary, args, logs) = (cast.binary.clone(), cast.args.clone(), cast.logs.clone());
        let started =
            tokio::task::spawn_blocking(move || Node::start(&binary, &args[slot], slot, &logs))
                .await
                .map_err(|e| e.to_string())?;
        match started {
            Ok(node) => {
                cast.addresses.write().unwrap()[slot] = node.address.clone();
                let old = std::mem::replace(&mut cast.nodes.lock().unwrap()[slot], node);
                drop(old); // already killed
                return Ok(());
            }
            Err(error) if now_ms() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Sends each request that got no receipt again (same key, same body), to the next node,
/// until it gets a receipt or a refusal other than `503` (at most 10 tries, a second apart).
async fn resend(client: &LoadClient, sent: &[Sent], nodes: usize) -> Vec<Sent> {
    let mut tasks = tokio::task::JoinSet::new();
    for original in sent {
        if matches!(original.answer, Answer::Receipt { .. }) {
            continue;
        }
        let (client, original) = (client.clone(), original.clone());
        tasks.spawn(async move {
            let mut node = original.node;
            let mut last = original.clone();
            for _ in 0..10 {
                node = (node + 1) % nodes;
                last = client.send(original.seq, node, original.job_ms).await;
                let definite = match &last.answer {
                    Answer::Receipt { .. } => true,
                    Answer::Refused { status, .. } => *status != 503 && *status != 409,
                    Answer::Silent(_) => false,
                };
                if definite {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            last
        });
    }
    let mut resent = Vec::new();
    while let Some(again) = tasks.join_next().await {
        if let Ok(again) = again {
            resent.push(again);
        }
    }
    println!(
        "sent again: {} requests without a receipt, {} now with one ({} of them replayed: \
         accepted the first time)",
        resent.len(),
        resent
            .iter()
            .filter(|s| matches!(s.answer, Answer::Receipt { .. }))
            .count(),
        resent
            .iter()
            .filter(|s| matches!(s.answer, Answer::Receipt { replayed: true, .. }))
            .count()
    );
    resent
}

/// The events the store has not finished: accepted, or pending delivery.
async fn unfinished(cluster: &Arc<Cluster>) -> Option<Vec<u64>> {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let rows = cluster
            .query(&format!(
                "SELECT event_id FROM {SCHEMA}.events WHERE state <= 1"
            ))
            .ok()?;
        Some(rows.iter().filter_map(|r| r.parse().ok()).collect())
    })
    .await
    .ok()
    .flatten()
}

fn read_database(cluster: &Cluster) -> Result<Database, String> {
    let events = cluster
        .query(&format!(
            "SELECT event_id, notification_id, state FROM {SCHEMA}.events"
        ))?
        .iter()
        .filter_map(|row| {
            let mut cells = row.split('|').map(|c| c.parse::<u64>().ok());
            Some((cells.next()??, cells.next()??, cells.next()?? as u8))
        })
        .collect();
    let keys = cluster
        .query(&format!(
            "SELECT key, event_id FROM {SCHEMA}.idempotency_keys"
        ))?
        .iter()
        .filter_map(|row| {
            let (key, id) = row.split_once('|')?;
            Some((key.to_owned(), id.parse().ok()?))
        })
        .collect();
    Ok(Database { events, keys })
}

/// Reads the status of a sample of the events (every one up to 1000, then 1000 evenly spread)
/// from every node.
async fn read_statuses(
    client: &LoadClient,
    sent: &[Sent],
    resent: &[Sent],
    seed: u64,
) -> Vec<StatusRead> {
    let receipts: Vec<(u64, String)> = sent
        .iter()
        .chain(resent)
        .filter_map(|s| match &s.answer {
            Answer::Receipt {
                event_id, location, ..
            } => Some((*event_id, location.clone())),
            _ => None,
        })
        .collect();
    let step = receipts.len().div_ceil(1000).max(1);
    let offset = seed as usize % step;
    let sample: Vec<(u64, String)> = receipts.into_iter().skip(offset).step_by(step).collect();
    client.read_statuses(sample).await
}
