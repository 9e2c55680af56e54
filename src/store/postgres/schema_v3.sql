-- Version 3: idempotency keys, each claimed in the same transaction as the event it names.

CREATE TABLE {schema}.idempotency_keys (
    instance_id   bigint NOT NULL,
    method        text   NOT NULL,
    path          text   NOT NULL,
    key           text   NOT NULL,
    -- SHA-256 of the claiming request (method, path and query, Content-Type, callback URL, body).
    fingerprint   bytea  NOT NULL,
    event_id      bigint NOT NULL,
    -- From then on (Unix ms) the key is free for new work; the retention sweep deletes it.
    expires_at_ms bigint NOT NULL,
    PRIMARY KEY (instance_id, method, path, key)
);
CREATE INDEX idempotency_keys_expiry ON {schema}.idempotency_keys (expires_at_ms);
