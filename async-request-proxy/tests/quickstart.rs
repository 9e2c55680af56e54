//! docs/proxy.md's quickstart, run as it is written: the `sh` blocks between
//! `<!-- quickstart:start -->` and `<!-- quickstart:end -->`, in one bash, from the repository's
//! root, with the ports the doc reads from the environment set to free ones. A user pastes the
//! same text, so a quickstart that no longer builds, starts, answers or verifies fails here.
//!
//! Also: `examples/receiver.py`, which the quickstart runs, against the signature vectors.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const START: &str = "<!-- quickstart:start -->";
const END: &str = "<!-- quickstart:end -->";
/// For the build (a fresh checkout compiles the proxy's whole tree) and everything after it.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// For the processes the doc started to be gone once its last block stopped them.
const STOP_DEADLINE: Duration = Duration::from_secs(40);

/// Before the doc's blocks: exit on the first failing command; then, and only then, stop what was
/// started and remove the doc's scratch directory (after a success the doc's own last block must
/// have done both: the test checks the processes).
const PRELUDE: &str = r#"set -euo pipefail
trap 'status=$?
if [ $status != 0 ]; then kill $(jobs -p) 2>/dev/null || true; rm -rf "${dir:-}"; fi
exit $status' EXIT
"#;

/// Between the doc's blocks before its last (start, request) and its last (stop): the time a
/// reader takes to look at the receiver's lines, here until both are there (30 s at most).
const WAIT_FOR_RECEIVER: &str = r#"
for _ in $(seq 300); do
  grep -q 'Elements signature verified' "$QUICKSTART_LOG" \
    && grep -q 'Standard Webhooks signature verified' "$QUICKSTART_LOG" && break
  sleep 0.1
done
"#;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the proxy crate is a folder of the repository")
        .to_owned()
}

/// The `sh` blocks of the quickstart section, in order.
fn quickstart_blocks(doc: &str) -> Vec<String> {
    let start = doc
        .find(START)
        .expect("docs/proxy.md marks its quickstart's start");
    let end = start + doc[start..].find(END).expect("… and its end");
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in doc[start..end].lines() {
        match (&mut block, line.trim_end()) {
            (None, "```sh") => block = Some(String::new()),
            (Some(_), "```") => blocks.extend(block.take()),
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(block.is_none(), "a quickstart block is not closed");
    blocks
}

fn free_ports<const N: usize>() -> [u16; N] {
    // All bound at once, so that they differ.
    let listeners: Vec<_> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// A folder of the test's own, removed when this is dropped: the bash's `TMPDIR`, so that what
/// `mktemp -d` made is removed even when the doc's commands did not get to it, and the log.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bash in a process group of its own, which everything it starts joins: whatever is left of
/// the group is killed when this is dropped, whatever happened.
struct Group(Child);

impl Group {
    fn id(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Only while bash or another member is left: the id of an empty group may name another's.
        let bash_running = matches!(self.0.try_wait(), Ok(None));
        if bash_running || !running_in(self.id()).is_empty() {
            // SAFETY: kill(2) on the process group this test created, which still has members.
            unsafe { libc::kill(-self.id(), libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

/// The processes of group `group` that still run (zombies, which are only waiting to be reaped,
/// do not count): their pid, state and command line.
fn running_in(group: i32) -> Vec<String> {
    let mut running = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses.
        let Some((_, fields)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == group.to_string() && fields[0] != "Z" {
            let command = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            running.push(format!(
                "{} {} {}",
                entry.file_name().to_string_lossy(),
                fields[0],
                String::from_utf8_lossy(&command).replace('\0', " ")
            ));
        }
    }
    running
}

#[test]
fn the_quickstart_in_docs_proxy_md_runs_as_written() {
    let root = repository();
    let doc = std::fs::read_to_string(root.join("docs/proxy.md")).unwrap();
    let blocks = quickstart_blocks(&doc);
    assert!(
        blocks.len() >= 2,
        "the quickstart has its commands and, last, the one that stops what they started: {blocks:?}"
    );
    let (stop, run) = blocks.split_last().unwrap();
    let script = format!("{PRELUDE}{}\n{WAIT_FOR_RECEIVER}\n{stop}", run.join("\n"));

    let scratch =
        Scratch(std::env::temp_dir().join(format!("tar-quickstart-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let log_path = scratch.0.join("output.log");
    let log = File::create(&log_path).unwrap();
    let [api, proxy, receiver] = free_ports();
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("API_PORT", api.to_string())
        .env("PROXY_PORT", proxy.to_string())
        .env("RECEIVER_PORT", receiver.to_string())
        .env("QUICKSTART_LOG", &log_path)
        .env("TMPDIR", &scratch.0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    // A reader's shell has none of the proxy's settings, and none of what cargo sets for a test:
    // build scripts that watch those (ring's does) would rebuild in the doc's `cargo build`, and
    // again in the next `cargo build` from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let from_cargo = [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_MANIFEST_LINKS",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name.as_ref())
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_");
        if from_cargo || name.starts_with("ASYNC_REQUEST_PROXY_") {
            command.env_remove(name.as_ref());
        }
    }
    let mut bash = Group(command.spawn().expect("bash runs"));
    let output = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        if let Some(status) = bash.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the quickstart did not finish within {SCRIPT_DEADLINE:?}:\n{}",
            output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = output();
    assert!(
        status.success(),
        "the quickstart failed ({status}):\n{output}\n---\n{script}"
    );

    // The doc's last block stopped everything it started.
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        let running = running_in(bash.id());
        if running.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running {STOP_DEADLINE:?} after the quickstart's last block: {running:?}\n{output}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // … and removed the secrets: what `mktemp -d` made is gone.
    let made: Vec<_> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().join("whsec.txt").exists())
        .map(|entry| entry.path())
        .collect();
    assert!(made.is_empty(), "left behind: {made:?}");

    // The synchronous request: the upstream's file, through the proxy.
    assert!(
        output
            .lines()
            .any(|line| line.starts_with("HTTP/1.") && line.contains(" 200 ")),
        "no 200 for the forwarded request:\n{output}"
    );
    assert!(
        output.lines().any(|line| line == r#"{"hello":"world"}"#),
        "the forwarded body:\n{output}"
    );
    // The async request: its receipt (curl prints it without a newline after it).
    assert!(
        output
            .lines()
            .any(|line| line.starts_with("HTTP/1.1 202 Accepted")),
        "no 202 for the async request:\n{output}"
    );
    let receipt = output
        .split(r#"{"eventId":"#)
        .nth(1)
        .and_then(|rest| rest.split_once(r#","eventStatus":"dispatched"}"#))
        .unwrap_or_else(|| panic!("no receipt:\n{output}"))
        .0;
    let event_id: u64 = receipt.parse().expect("the receipt's eventId");
    // The receiver's lines: the notification, and both schemes verified.
    let notification = output
        .split("notification: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("the receiver printed no notification:\n{output}"));
    let notification: Value = serde_json::from_str(notification).unwrap();
    assert_eq!(notification["eventId"], event_id, "{notification}");
    assert_eq!(notification["eventStatus"], "completed", "{notification}");
    assert_eq!(notification["statusCode"], 200, "{notification}");
    assert_eq!(
        notification["response"],
        serde_json::json!({"hello": "world"})
    );
    for scheme in ["Elements", "Standard Webhooks"] {
        let line = format!("{scheme} signature verified");
        assert!(
            output.lines().any(|l| l.ends_with(&line)),
            "the receiver did not print {line:?}:\n{output}"
        );
    }
    assert!(!output.contains("signature FAILED"), "{output}");
}

/// `examples/receiver.py` accepts every known-answer vector of tests/data/signatures.json, with
/// the 5-minute tolerance both ways and several signatures in one header, and refuses a changed
/// body, a wrong key, an old timestamp and the vectors that must be refused.
#[test]
fn the_python_receiver_agrees_with_the_signature_vectors() {
    const CHECK: &str = r#"
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("receiver", "examples/receiver.py")
r = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r)
vectors = json.load(open("tests/data/signatures.json"))
n = 0
for c in vectors["elements_webhook_signature"]["cases"]:
    key, body, h = c["key"].encode(), c["body"].encode(), {"Elements-Webhook-Signature": c["expected"]}
    assert r.elements_ok(key, h, body), c
    assert not r.elements_ok(key, h, body + b" "), c
    assert not r.elements_ok(key + b"x", h, body), c
    n += 1
other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
for c in vectors["standard_webhooks"]["cases"]:
    t, body = c["timestamp"], c["body"].encode()
    h = {"webhook-id": c["id"], "webhook-timestamp": str(t), "webhook-signature": c["expected"]}
    assert r.standard_ok([c["secret"]], h, body, now=t), c
    assert r.standard_ok([c["secret"]], h, body, now=t + 300), c
    assert r.standard_ok([c["secret"]], h, body, now=t - 300), c
    assert not r.standard_ok([c["secret"]], h, body, now=t + 301), c
    assert not r.standard_ok([c["secret"]], h, body, now=t - 301), c
    assert not r.standard_ok([c["secret"]], h, body), c  # by the clock: years old
    assert not r.standard_ok([c["secret"]], h, body + b" ", now=t), c
    assert not r.standard_ok([other], h, body, now=t), c
    several = dict(h, **{"webhook-signature": "v2,abc v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU= " + c["expected"]})
    assert r.standard_ok([other, c["secret"]], several, body, now=t), c
    n += 1
for c in vectors["standard_webhooks"]["must_reject"]:
    h = {"webhook-id": c["id"], "webhook-timestamp": str(c["timestamp"]), "webhook-signature": c["signature"]}
    assert not r.standard_ok([c["secret"]], h, c["body"].encode(), now=c["timestamp"]), c["why"]
    n += 1
print(n, "vectors")
"#;
    let output = Command::new("python3")
        .args(["-c", CHECK])
        .current_dir(repository())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("tests/data/signatures.json")).unwrap(),
    )
    .unwrap();
    let count = |cases: &Value| cases.as_array().unwrap().len();
    let expected = count(&vectors["elements_webhook_signature"]["cases"])
        + count(&vectors["standard_webhooks"]["cases"])
        + count(&vectors["standard_webhooks"]["must_reject"]);
    assert_eq!(stdout.trim(), format!("{expected} vectors"));
}
