//! The store the app's layer keeps its events in: memory, a redb file or a PostgreSQL schema,
//! the files and schemas a run made removed at its end.

use std::path::PathBuf;
use std::sync::Mutex;

use tower_async_request::AsyncRequestLayerBuilder;

use crate::options::StoreKind;

/// Files of redb stores made by this run, removed at the end.
pub(crate) static STORE_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// PostgreSQL schemas made by this run, dropped at the end.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
static STORE_SCHEMAS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub(crate) async fn with_store(
    builder: AsyncRequestLayerBuilder,
    store: StoreKind,
    tag: &str,
) -> AsyncRequestLayerBuilder {
    match store {
        StoreKind::Memory => builder, // MemoryStore is the default
        #[cfg(feature = "redb")]
        StoreKind::Redb => {
            let path = std::env::temp_dir().join(format!(
                "tower-async-request-load-{}-{tag}.redb",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            let opened = tower_async_request::store::RedbStore::open(&path).expect("open redb");
            STORE_FILES.lock().unwrap().push(path);
            builder.store(opened)
        }
        #[cfg(not(feature = "redb"))]
        StoreKind::Redb => unreachable!("rejected by Options::parse ({tag})"),
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            let schema = format!("tar_load_{}_{tag}", std::process::id());
            let opened = tower_async_request::store::PostgresStore::builder(database_url())
                .schema(schema.clone())
                .connect()
                .await
                .expect("a PostgreSQL server at DATABASE_URL (or the local default)");
            STORE_SCHEMAS.lock().unwrap().push(schema);
            builder.store(opened)
        }
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres => unreachable!("rejected by Options::parse ({tag})"),
    }
}

/// Drops the schemas this run made.
#[cfg(feature = "postgres")]
pub(crate) fn drop_schemas() {
    let schemas: Vec<String> = STORE_SCHEMAS.lock().unwrap().drain(..).collect();
    if schemas.is_empty() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            for schema in schemas {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await;
            }
        }
    });
}
