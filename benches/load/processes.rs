//! Three processes (`--shape processes`)
//!
//! The harness starts this same binary twice more, as `--role app` and `--role receiver`, each
//! printing `LISTENING <address>` once it serves and stopping when its standard input closes. Each
//! also answers `GET /__stats` (outside the layer) with what the harness cannot read from `/proc`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;

use crate::app::{layer_builder, serve_here, work};
use crate::counting_alloc;
use crate::options::{Options, Role};
use crate::receiver::receiver_router;
use crate::sides::{Side, REMOTE_PIDS};
#[cfg(feature = "postgres")]
use crate::store::drop_schemas;
use crate::store::{with_store, STORE_FILES};

/// Runs this process as the app or the receiver until its standard input closes.
pub(crate) fn child_main(options: Options, role: Role) -> ExitCode {
    let (runtime, router) = match role {
        Role::App => {
            counting_alloc::enable();
            let runtime = Side::App.build_runtime(options.threads);
            let router = runtime.block_on(async {
                let layer = with_store(layer_builder(options.signatures), options.store, "load")
                    .await
                    .build()
                    .expect("layer");
                let handle = layer.handle();
                Router::new().route("/work", post(work)).layer(layer).route(
                    "/__stats",
                    axum::routing::get(move || {
                        let (allocations, bytes) = counting_alloc::totals();
                        std::future::ready(axum::Json(serde_json::json!({
                            "allocations": allocations,
                            "bytes": bytes,
                            "metrics": format!("{:?}", handle.metrics()),
                        })))
                    }),
                )
            });
            (runtime, router)
        }
        Role::Receiver => (
            Side::Receiver.build_runtime(1),
            receiver_router(Arc::default()),
        ),
    };
    runtime.block_on(async {
        let side = match role {
            Role::App => Side::App,
            Role::Receiver => Side::Receiver,
        };
        let address = serve_here(router, side).await;
        println!("LISTENING {address}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Until the harness closes our standard input (or goes away).
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    });
    runtime.shutdown_background();
    for path in STORE_FILES.lock().unwrap().drain(..) {
        let _ = std::fs::remove_file(path);
    }
    #[cfg(feature = "postgres")]
    drop_schemas();
    ExitCode::SUCCESS
}

/// A process the harness started: stopped and reaped when dropped.
pub(crate) struct ChildProcess {
    child: std::process::Child,
    pub(crate) address: SocketAddr,
}

impl ChildProcess {
    pub(crate) fn start(options: &Options, role: Role) -> Self {
        use std::io::BufRead;
        let command = options.command_line();
        let args = command.split_once(" -- ").map_or("", |(_, args)| args);
        let role_name = match role {
            Role::App => "app",
            Role::Receiver => "receiver",
        };
        // `LOAD_APP_WRAPPER="heaptrack -o /tmp/app"` (say) runs the app under a profiler.
        let wrapper = std::env::var("LOAD_APP_WRAPPER")
            .ok()
            .filter(|_| role == Role::App);
        let exe = std::env::current_exe().expect("this binary");
        let mut command = match wrapper.as_deref().map(str::split_whitespace) {
            Some(mut words) => {
                let mut command = std::process::Command::new(words.next().expect("a command"));
                command.args(words).arg(exe);
                command
            }
            None => std::process::Command::new(exe),
        };
        let mut child = command
            .args(args.split_whitespace())
            .args(["--role", role_name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start a child process");
        // The first line that says where it listens (a wrapper may print before it); the rest
        // of its output is passed on.
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => match line.trim().strip_prefix("LISTENING ") {
                    Some(address) => break address.parse().expect("an address"),
                    None => println!("[{role_name}] {line}"),
                },
                _ => panic!("the {role_name} process ended without saying where it listens"),
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                println!("[{role_name}] {line}");
            }
        });
        let side = match role {
            Role::App => Side::App,
            Role::Receiver => Side::Receiver,
        };
        let _ = REMOTE_PIDS[side as usize].set(child.id());
        Self { child, address }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // asks it to stop
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
