//! A PostgreSQL server for the store tests: `DATABASE_URL`, or the local default. Each test gets a
//! schema of its own, dropped when the test ends.
#![allow(dead_code)] // each test file uses a different part

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `DATABASE_URL`, or the local default (which `TAR_TEST_DEFAULT_DATABASE_URL` replaces, so the
/// test of this rule can play a laptop without a server).
pub fn url() -> String {
    std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("TAR_TEST_DEFAULT_DATABASE_URL"))
        .unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Whether the server answers. Where it must (`CI` is set, or `DATABASE_URL` names a server
/// explicitly), a server that does not answer fails the test with the reason; elsewhere (a
/// laptop without PostgreSQL) the test is skipped, said once per test file.
pub async fn available(file: &str) -> bool {
    static SAID: OnceLock<()> = OnceLock::new();
    let url = url();
    // The server's own words ("database … does not exist") where it gave some.
    let reason = |error: tokio_postgres::Error| match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    };
    let error = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client.simple_query("SELECT 1").await.err().map(reason)
        }
        Err(error) => Some(reason(error)),
    };
    let Some(error) = error else {
        return true;
    };
    if std::env::var_os("CI").is_some() || std::env::var_os("DATABASE_URL").is_some() {
        panic!("{file} needs PostgreSQL at {url} (CI or DATABASE_URL is set): {error}");
    }
    SAID.get_or_init(|| {
        // Straight to stderr: the test harness keeps what `eprintln!` says from passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped {file}: no PostgreSQL at {url} ({error}); start one or set DATABASE_URL to run these tests"
        );
    });
    false
}

/// A schema no other test uses, dropped (with everything in it) when this is dropped.
pub struct Schema(pub String);

impl Schema {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Self(format!(
            "tar_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, schema) = (url(), self.0.clone());
        // Its own thread and runtime: a test's runtime may be gone or busy by now.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                }
            })
        })
        .join();
    }
}
