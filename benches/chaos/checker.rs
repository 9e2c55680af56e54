//! The checker: reads the client's and the receiver's records, the faults as they happened, the
//! nodes' takeovers and the database, and says which guarantee held. Every guarantee is checked
//! on every event; the figures are printed beside them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use bytes::Bytes;

use crate::client::{Answer, Sent, StatusRead};
use crate::receiver::Hit;
use crate::run::Done;
use crate::schedule::{Kind, LEASE};

/// The store's rows at the end: (event id, notification id, state), and the idempotency keys.
pub(crate) struct Database {
    pub(crate) events: Vec<(u64, u64, u8)>,
    pub(crate) keys: Vec<(String, u64)>,
}

/// Everything a run recorded.
pub(crate) struct History {
    pub(crate) sent: Vec<Sent>,
    pub(crate) resent: Vec<Sent>,
    pub(crate) hits: Vec<Hit>,
    pub(crate) faults: Vec<Done>,
    pub(crate) takeovers: Vec<(u64, Vec<u64>)>,
    pub(crate) database: Option<Database>,
    pub(crate) status_reads: Vec<StatusRead>,
    pub(crate) load_ms: u64,
    pub(crate) load_start_ms: u64,
    pub(crate) quiet_ms: u64,
    pub(crate) rate: u64,
    pub(crate) node_count: usize,
}

/// A notification as the receiver read it.
struct Note {
    notification_id: u64,
    /// `completed`, or `failed/<code>`.
    outcome: String,
    seq: Option<u64>,
}

fn parse(body: &Bytes) -> Option<Note> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let status = json["eventStatus"].as_str()?;
    let outcome = match status {
        "completed" => "completed".to_owned(),
        other => format!("{other}/{}", json["error"]["code"].as_str().unwrap_or("?")),
    };
    json["eventId"].as_u64()?;
    Some(Note {
        notification_id: json["notificationId"].as_u64()?,
        outcome,
        seq: json["response"]["seq"].as_u64(),
    })
}

/// The event id a notification names.
pub(crate) fn event_id_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("eventId")?
        .as_u64()
}

/// One guarantee: its name and the events (with a line each) that broke it.
struct Guarantee {
    name: &'static str,
    broken: Vec<(u64, String)>,
}

impl Guarantee {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            broken: Vec::new(),
        }
    }
}

/// Prints the report; whether every guarantee held.
pub(crate) fn check(history: &History) -> bool {
    let mut out = String::new();
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let load = |ms: u64| seconds(ms.saturating_sub(history.load_start_ms));

    // Receipts: which request each event belongs to.
    let mut unique = Guarantee::new("ids unique: one event per request, one request per event id");
    let mut event_seq: HashMap<u64, u64> = HashMap::new();
    let mut seq_events: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut first_sent: HashMap<u64, &Sent> = HashMap::new();
    for sent in history.sent.iter().chain(&history.resent) {
        first_sent.entry(sent.seq).or_insert(sent);
        if let Answer::Receipt { event_id, .. } = sent.answer {
            if let Some(&other) = event_seq.get(&event_id) {
                if other != sent.seq {
                    unique.broken.push((
                        event_id,
                        format!("in the receipts of requests {other} and {}", sent.seq),
                    ));
                }
            }
            event_seq.insert(event_id, sent.seq);
            seq_events.entry(sent.seq).or_default().insert(event_id);
        }
    }
    for (seq, events) in &seq_events {
        if events.len() > 1 {
            let first = *events.iter().min().expect("two");
            unique.broken.push((
                first,
                format!("request {seq} got receipts for events {events:?}"),
            ));
        }
    }

    // Notifications per event.
    let mut per_event: BTreeMap<u64, Vec<&Hit>> = BTreeMap::new();
    let mut unreadable = 0usize;
    for hit in &history.hits {
        match event_id_of(&hit.body) {
            Some(id) => per_event.entry(id).or_default().push(hit),
            None => unreadable += 1,
        }
    }
    let mut one_outcome = Guarantee::new("never two different notifications for one event");
    let mut interrupted_after_completed =
        Guarantee::new("a job that completed was not also reported interrupted");
    let mut no_stray = Guarantee::new("no notification for an event without a 202");
    let mut right_work = Guarantee::new("each completed notification answers its own request");
    let mut notification_ids: HashMap<u64, u64> = HashMap::new();
    let mut outcomes: HashMap<u64, String> = HashMap::new();
    let mut resends = 0u64;
    for (&event_id, hits) in &per_event {
        let bodies: HashSet<&Bytes> = hits.iter().map(|hit| &hit.body).collect();
        let notes: Vec<Note> = bodies.iter().filter_map(|body| parse(body)).collect();
        if notes.len() != bodies.len() {
            one_outcome.broken.push((
                event_id,
                "a notification that is not the crate's JSON".into(),
            ));
        }
        if bodies.len() > 1 {
            let kinds: Vec<&str> = notes.iter().map(|n| n.outcome.as_str()).collect();
            one_outcome.broken.push((
                event_id,
                format!("{} different bodies: {kinds:?}", bodies.len()),
            ));
            if kinds.contains(&"completed") && kinds.contains(&"failed/interrupted") {
                interrupted_after_completed
                    .broken
                    .push((event_id, "completed and interrupted".into()));
            }
        }
        let Some(note) = notes.first() else { continue };
        outcomes.insert(event_id, note.outcome.clone());
        if let Some(other) = notification_ids.insert(note.notification_id, event_id) {
            unique.broken.push((
                event_id,
                format!(
                    "notification id {} also names event {other}",
                    note.notification_id
                ),
            ));
        }
        match event_seq.get(&event_id) {
            None => no_stray.broken.push((
                event_id,
                format!(
                    "{} ({} hits), no receipt named it",
                    note.outcome,
                    hits.len()
                ),
            )),
            Some(&seq) => {
                if note.outcome == "completed" && note.seq != Some(seq) {
                    right_work.broken.push((
                        event_id,
                        format!("answers request {:?}, its receipt was for {seq}", note.seq),
                    ));
                }
            }
        }
        let accepted = hits.iter().filter(|hit| hit.answered.taken()).count() as u64;
        resends += accepted.saturating_sub(1);
    }

    // Every receipt's event ended with one notification taken by the receiver.
    let mut delivered = Guarantee::new("every 202'd event got its terminal notification delivered");
    for (&event_id, &seq) in &event_seq {
        let taken = per_event
            .get(&event_id)
            .is_some_and(|hits| hits.iter().any(|hit| hit.answered.taken()));
        if !taken {
            let seen = per_event.get(&event_id).map_or(0, Vec::len);
            delivered.broken.push((
                event_id,
                format!("request {seq}: no notification taken ({seen} attempts seen)"),
            ));
        }
    }

    // A delivery written with asynchronous commit (the store contract) and taken by the receiver
    // just before an immediate stop of PostgreSQL may be lost with the server's unflushed WAL:
    // the row then says pending. Documented; counted apart, not a broken guarantee.
    let immediate_stops: Vec<u64> = history
        .faults
        .iter()
        .filter(|f| f.kind == Kind::Restart(crate::schedule::StopMode::Immediate))
        .map(|f| f.start_ms)
        .collect();
    let unflushed: HashSet<u64> = per_event
        .iter()
        .filter_map(|(&event_id, hits)| {
            let taken = hits
                .iter()
                .filter(|h| h.answered.taken())
                .map(|h| h.at_ms)
                .min()?;
            immediate_stops
                .iter()
                .any(|&stop| stop + 200 >= taken && stop <= taken + 1_500)
                .then_some(event_id)
        })
        .collect();
    let mut lost_delivery_writes = 0u64;

    // The database at the end.
    let mut stored = Guarantee::new("the store holds nothing unfinished, dead or unreceipted");
    let mut state_counts = [0u64; 5];
    if let Some(database) = &history.database {
        for &(event_id, _, state) in &database.events {
            if let Some(count) = state_counts.get_mut(state as usize) {
                *count += 1;
            }
            if state == 1 && unflushed.contains(&event_id) {
                lost_delivery_writes += 1;
                continue;
            }
            let name = match state {
                0 => Some("accepted, its job never ended"),
                1 => Some("pending delivery"),
                3 => Some("a dead letter"),
                _ => None,
            };
            if let Some(name) = name {
                stored.broken.push((event_id, name.into()));
            }
            if !event_seq.contains_key(&event_id) {
                stored.broken.push((
                    event_id,
                    format!("recorded (state {state}), no receipt names it"),
                ));
            }
        }
        for (key, event_id) in &database.keys {
            let seq = key
                .trim_matches('"')
                .strip_prefix("chaos-")
                .and_then(|n| n.parse::<u64>().ok());
            if let (Some(seq), Some(&receipt_seq)) = (seq, event_seq.get(event_id)) {
                if seq != receipt_seq {
                    stored.broken.push((
                        *event_id,
                        format!("key of request {seq}, receipt of request {receipt_seq}"),
                    ));
                }
            }
        }
    }

    // Statuses read from every node.
    let mut readable = Guarantee::new("each event's status readable from every node, as notified");
    for read in &history.status_reads {
        let expected = outcomes.get(&read.event_id);
        let status = read.body["eventStatus"].as_str().unwrap_or("?");
        let outcome = match status {
            "completed" => "completed".to_owned(),
            other => format!(
                "{other}/{}",
                read.body["error"]["code"].as_str().unwrap_or("?")
            ),
        };
        let state = read.body["delivery"]["state"].as_str().unwrap_or("?");
        let state_ok = state == "delivered" || unflushed.contains(&read.event_id);
        if read.status != 200 || Some(&outcome) != expected || !state_ok {
            readable.broken.push((
                read.event_id,
                format!(
                    "node {}: {} {outcome} ({state}), notified {expected:?}",
                    read.node, read.status
                ),
            ));
        }
    }

    // Figures.
    let requests = history.sent.len() as u64;
    let receipts = event_seq.len() as u64;
    let first_receipts = history
        .sent
        .iter()
        .filter(|s| matches!(s.answer, Answer::Receipt { .. }))
        .count();
    let node_faults: Vec<&Done> = history
        .faults
        .iter()
        .filter(|f| !matches!(f.kind, Kind::Receiver(_)))
        .collect();
    let during_fault = |sent: &Sent| {
        node_faults.iter().any(|f| {
            sent.sent_ms + 500 >= f.start_ms
                && sent.sent_ms <= f.end_ms + 2 * LEASE.as_millis() as u64
        })
    };
    let mut refusals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut no_answer = (0u64, 0u64);
    for sent in &history.sent {
        match &sent.answer {
            Answer::Receipt { .. } => {}
            Answer::Refused { status, code } => {
                let entry = refusals.entry(format!("{status} {code}")).or_default();
                entry.0 += 1;
                entry.1 += during_fault(sent) as u64;
            }
            Answer::Silent(_) => {
                no_answer.0 += 1;
                no_answer.1 += during_fault(sent) as u64;
            }
        }
    }
    let _ = writeln!(out, "\n=== chaos report");
    let _ = writeln!(
        out,
        "load: {requests} requests in {:.0} s (asked {}/s, sent {:.0}/s) to {} node(s); \
         quiet period {:.1} s",
        seconds(history.load_ms),
        history.rate,
        requests as f64 / seconds(history.load_ms),
        history.node_count,
        seconds(history.quiet_ms),
    );
    let _ = writeln!(
        out,
        "events accepted (202): {receipts} ({first_receipts} at the first try)"
    );
    for (answer, (count, in_fault)) in &refusals {
        let _ = writeln!(out, "refused {answer}: {count} ({in_fault} during a fault)");
    }
    let _ = writeln!(
        out,
        "no answer (connection failed, or none in 10 s): {} ({} during a fault)",
        no_answer.0, no_answer.1
    );
    let resent_receipts = history
        .resent
        .iter()
        .filter(|s| matches!(s.answer, Answer::Receipt { .. }))
        .count();
    let _ = writeln!(
        out,
        "sent again under their key: {} requests, {resent_receipts} receipts",
        history.resent.len()
    );
    // The ambiguous commit: no answer (or a refusal), yet the event was recorded; the key's
    // replay tells, and the fault it happened under is named.
    let ambiguous: Vec<(&Sent, &Sent)> = history
        .resent
        .iter()
        .filter(|s| matches!(s.answer, Answer::Receipt { replayed: true, .. }))
        .filter_map(|again| {
            history
                .sent
                .iter()
                .find(|s| s.seq == again.seq)
                .map(|first| (first, again))
        })
        .collect();
    let _ = writeln!(
        out,
        "ambiguous commits (no receipt, yet recorded; replayed under the key): {}",
        ambiguous.len()
    );
    for (first, again) in ambiguous.iter().take(20) {
        // The database or node fault in force when the answer came (the latest to start).
        let fault = history
            .faults
            .iter()
            .filter(|f| !matches!(f.kind, Kind::Receiver(_)))
            .filter(|f| f.start_ms <= first.answered_ms && first.sent_ms <= f.end_ms + 2_000)
            .max_by_key(|f| f.start_ms)
            .map_or("no fault".to_owned(), |f| {
                format!("{} at {:.1} s", f.kind.name(), load(f.start_ms))
            });
        let event = match again.answer {
            Answer::Receipt { event_id, .. } => event_id,
            _ => 0,
        };
        let first_answer = match &first.answer {
            Answer::Silent(why) => format!("no answer ({why})"),
            Answer::Refused { status, code } => format!("{status} {code}"),
            Answer::Receipt { .. } => "a receipt".into(),
        };
        let outcome = outcomes
            .get(&event)
            .map_or("no notification", String::as_str);
        let _ = writeln!(
            out,
            "  request {} to node {} (event {event}, {outcome}) at {:.1} s: {first_answer} at \
             {:.1} s; {fault}",
            first.seq,
            first.node,
            load(first.sent_ms),
            load(first.answered_ms)
        );
    }
    let accepted_events = per_event
        .values()
        .filter(|hits| hits.iter().any(|h| h.answered.taken()))
        .count() as u64;
    let _ = writeln!(
        out,
        "notifications: {} hits at the receiver ({unreadable} unreadable), {accepted_events} \
         events taken, {resends} byte-identical re-sends after one was taken ({:.2} per 1000 \
         events)",
        history.hits.len(),
        resends as f64 * 1000.0 / accepted_events.max(1) as f64
    );
    let mut by_outcome: BTreeMap<&str, u64> = BTreeMap::new();
    for outcome in outcomes.values() {
        *by_outcome.entry(outcome).or_default() += 1;
    }
    let _ = writeln!(out, "outcomes: {by_outcome:?}");
    if history.database.is_some() {
        let _ = writeln!(
            out,
            "store at the end: accepted {}, pending {}, delivered {}, dead {}, not requested {}",
            state_counts[0], state_counts[1], state_counts[2], state_counts[3], state_counts[4]
        );
        let _ = writeln!(
            out,
            "deliveries taken just before an immediate stop, their asynchronous write lost \
             (still pending in the store): {lost_delivery_writes}"
        );
    }
    let _ = writeln!(
        out,
        "status reads: {} ({} events x {} node(s))",
        history.status_reads.len(),
        history.status_reads.len() / history.node_count.max(1),
        history.node_count
    );

    // Faults and how fast the cluster moved on.
    let _ = writeln!(out, "faults:");
    for kind in Kind::ALL {
        let count = history
            .faults
            .iter()
            .filter(|f| f.kind.name() == kind.name())
            .count();
        let _ = writeln!(out, "  {:32} {count}", kind.name());
    }
    let takeover = |fault: &Done| -> Option<u64> {
        let id = fault.node_id?;
        history
            .takeovers
            .iter()
            // A takeover this fault caused: before the node was back for long (a node that
            // came back in time may be taken over by a later fault instead).
            .filter(|(at, nodes)| {
                *at >= fault.start_ms
                    && *at <= fault.end_ms + 2 * LEASE.as_millis() as u64
                    && nodes.contains(&id)
            })
            .map(|(at, _)| at - fault.start_ms)
            .min()
    };
    for kind in [
        Kind::Kill,
        Kind::Stop,
        Kind::Cut(crate::schedule::Cut::Close),
    ] {
        let struck: Vec<&Done> = history
            .faults
            .iter()
            .filter(|f| f.kind.name() == kind.name() && f.node_id.is_some())
            .collect();
        if struck.is_empty() {
            continue;
        }
        let times: Vec<u64> = struck.iter().filter_map(|f| takeover(f)).collect();
        let _ = writeln!(
            out,
            "  {}: its work taken over by a peer after {} of {} ({})",
            kind.name(),
            times.len(),
            struck.len(),
            match times.iter().max() {
                Some(worst) => format!(
                    "worst {:.1} s, best {:.1} s",
                    seconds(*worst),
                    seconds(*times.iter().min().expect("one"))
                ),
                None => "none".into(),
            }
        );
    }
    let worst_death = history
        .faults
        .iter()
        .filter(|f| matches!(f.kind, Kind::Kill | Kind::Stop))
        .filter_map(takeover)
        .max();
    if let Some(worst) = worst_death {
        let _ = writeln!(
            out,
            "  worst takeover (a node's death or stall to its work moving on): {:.1} s \
             (lease {:.0} s)",
            seconds(worst),
            LEASE.as_secs_f64()
        );
    }
    let first_receipt_after = |from_ms: u64| -> Option<u64> {
        history
            .sent
            .iter()
            .filter(|s| s.sent_ms >= from_ms && matches!(s.answer, Answer::Receipt { .. }))
            .map(|s| s.answered_ms - from_ms)
            .min()
    };
    for fault in &history.faults {
        match fault.kind {
            Kind::Restart(_) => {
                let _ = writeln!(
                    out,
                    "  {} at {:.1} s: down {:.1} s; ready to first new 202: {}",
                    fault.kind.name(),
                    load(fault.start_ms),
                    seconds(fault.end_ms - fault.start_ms),
                    first_receipt_after(fault.end_ms)
                        .map_or("none".into(), |ms| format!("{:.2} s", seconds(ms)))
                );
            }
            Kind::Kill if history.database.is_none() => {
                let _ = writeln!(
                    out,
                    "  SIGKILL at {:.1} s: restarted after {:.1} s; then first new 202 after {}",
                    load(fault.start_ms),
                    seconds(fault.end_ms - fault.start_ms),
                    first_receipt_after(fault.end_ms)
                        .map_or("none".into(), |ms| format!("{:.2} s", seconds(ms)))
                );
            }
            _ => {}
        }
    }

    // The verdict, with the events concerned.
    let guarantees = [
        delivered,
        one_outcome,
        interrupted_after_completed,
        no_stray,
        right_work,
        unique,
        stored,
        readable,
    ];
    let _ = writeln!(out, "guarantees:");
    let mut held = true;
    for guarantee in &guarantees {
        let verdict = if guarantee.broken.is_empty() {
            "held".to_owned()
        } else {
            held = false;
            format!("BROKEN for {} event(s)", guarantee.broken.len())
        };
        let _ = writeln!(out, "  {:62} {verdict}", guarantee.name);
    }
    let _ = writeln!(
        out,
        "lost = {}, different outcomes = {}",
        guarantees[0].broken.len(),
        guarantees[1].broken.len()
    );
    for guarantee in guarantees.iter().filter(|g| !g.broken.is_empty()) {
        let _ = writeln!(out, "--- {} (at most 20 shown)", guarantee.name);
        for (event_id, why) in guarantee.broken.iter().take(20) {
            let _ = writeln!(out, "  event {event_id}: {why}");
            if let Some(seq) = event_seq.get(event_id) {
                for sent in history
                    .sent
                    .iter()
                    .chain(&history.resent)
                    .filter(|s| s.seq == *seq)
                {
                    let _ = writeln!(
                        out,
                        "    request {seq} to node {} at {:.3} s ({} ms job): {:?} at {:.3} s",
                        sent.node,
                        load(sent.sent_ms),
                        sent.job_ms,
                        sent.answer,
                        load(sent.answered_ms)
                    );
                }
            }
            for hit in per_event.get(event_id).into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "    at {:.3} s {:?}: {}",
                    load(hit.at_ms),
                    hit.answered,
                    String::from_utf8_lossy(&hit.body)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "faults as they happened: {}",
        history
            .faults
            .iter()
            .map(|f| format!(
                "{} [node {}, id {:?}] {:.1}-{:.1} s",
                f.kind.name(),
                f.node,
                f.node_id,
                load(f.start_ms),
                load(f.end_ms)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        out,
        "verdict: {}",
        if held {
            "every guarantee held"
        } else {
            "A GUARANTEE BROKE"
        }
    );
    print!("{out}");
    held
}
