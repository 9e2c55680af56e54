//! The schema, created and migrated by the store itself: versioned, idempotent, and safe when
//! several nodes start at once (one transaction under an advisory lock keyed by the schema name).

use tokio_postgres::Client;

/// Each version's SQL, in order; `{schema}` stands for the quoted schema name.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
    include_str!("schema_v5.sql"),
    include_str!("schema_v6.sql"),
];

/// Brings `schema` up to the newest version.
pub(super) async fn migrate(
    client: &mut Client,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    let quoted = quote(schema);
    let txn = client.transaction().await?;
    // Nodes starting together queue here; the first creates, the others find it done.
    txn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tower_async_request:' || $1))",
        &[&schema],
    )
    .await?;
    txn.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         CREATE TABLE IF NOT EXISTS {quoted}.migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let applied: i32 = txn
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {quoted}.migrations"),
            &[],
        )
        .await?
        .get(0);
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = index as i32 + 1;
        txn.batch_execute(&sql.replace("{schema}", &quoted)).await?;
        txn.execute(
            &format!("INSERT INTO {quoted}.migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await?;
        tracing::info!(schema, version, "migrated the event store's schema");
    }
    txn.commit().await
}

/// A schema name is a plain identifier: letters, digits and `_`, not starting with a digit, at
/// most 63 bytes (PostgreSQL's limit).
pub(super) fn valid_schema(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub(super) fn quote(schema: &str) -> String {
    debug_assert!(valid_schema(schema));
    format!("\"{schema}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["tower_async_request", "t1", "_x"] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in ["", "1t", "Upper", "a-b", "a\"b", "a;drop", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
        assert_eq!(quote("tar"), "\"tar\"");
    }
}
