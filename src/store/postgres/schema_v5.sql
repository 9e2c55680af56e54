-- Version 5: receivers disabled for failing too long, one row per receiver, so every node (and
-- every restart) honours a disabling until an operator enables the receiver again.

CREATE TABLE {schema}.disabled_receivers (
    -- The receiver's id: 16 hex digits, the same on every node.
    id               text   PRIMARY KEY,
    instance_id      bigint NOT NULL,
    -- `scheme://host:port`.
    origin           text   NOT NULL,
    -- Unix ms: its first failure since its last success, and when it was disabled.
    failing_since_ms bigint NOT NULL,
    disabled_at_ms   bigint NOT NULL
);
