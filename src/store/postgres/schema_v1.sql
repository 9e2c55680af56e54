-- Version 1 of the PostgresStore schema. `{schema}` is the store's schema, quoted.
-- Applied once, in a transaction, under an advisory lock (see migrate.rs).

-- Event and notification ids, handed out in blocks of 1024 (one round trip per 512 events);
-- never above 2^53 - 1, which JavaScript receivers read exactly.
CREATE SEQUENCE {schema}.ids INCREMENT BY 1024 MINVALUE 1 MAXVALUE 9007199254740991;

-- Nodes sharing the store, each with its heartbeat. A node silent for longer than the lease
-- timeout loses its events to the first node that notices.
CREATE SEQUENCE {schema}.node_ids;
CREATE TABLE {schema}.nodes (
    node_id      bigint PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- One row per event: accepted (state 0), then its notification: pending (1), delivered (2),
-- dead (3) or not requested (4). `owner` is the node that runs its job and delivers it.
CREATE TABLE {schema}.events (
    event_id           bigint PRIMARY KEY,
    notification_id    bigint NOT NULL, -- unique by the sequence; found by it only when dead
    instance_id        bigint NOT NULL,
    target             text NOT NULL,
    instance_url       boolean NOT NULL,
    accepted_at_ms     bigint NOT NULL,
    owner              bigint NOT NULL,
    state              smallint NOT NULL,
    body               bytea,
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at_ms bigint NOT NULL DEFAULT 0,
    last_error         text,
    retain_until_ms    bigint NOT NULL DEFAULT 0
);
-- What a node owns and has not finished: what another node takes over.
CREATE INDEX events_unfinished ON {schema}.events (owner) WHERE state <= 1;
-- Dead letters, oldest first.
CREATE INDEX events_dead ON {schema}.events (notification_id) WHERE state = 3;
-- Finished events kept for status queries, deleted in batches once past their retention.
CREATE INDEX events_retained ON {schema}.events (retain_until_ms) WHERE state IN (2, 4);
