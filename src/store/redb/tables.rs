//! The tables of the store file, and the key the id floor is kept under.

use redb::TableDefinition;

pub(super) const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
pub(super) const NOTIFICATIONS: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("notifications");
pub(super) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Event id → notification id of finished events, for status queries.
pub(super) const EVENT_INDEX: TableDefinition<'_, u64, u64> = TableDefinition::new("event_index");
/// Idempotency key (its scope's SHA-256, `KeyScope::digest`) → the event holding it, its
/// request's fingerprint and its expiry (`encoding::encode_key_holder`).
pub(super) const IDEMPOTENCY_KEYS: TableDefinition<'_, &[u8], &[u8]> =
    TableDefinition::new("idempotency_keys");
/// Disabled receiver's id → the rest of its record (`encoding::encode_receiver`). Created by the
/// first disabling: a file written before it has none, and reads as no receiver disabled.
pub(super) const DISABLED_RECEIVERS: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("disabled_receivers");
pub(super) const NEXT_ID: &str = "next_id";
