-- Version 2: each notification's last delivery attempts, and dead letters listed per instance.

-- `[{"t": unix ms, "d": µs, "s": HTTP status, "e": error}, …]`, oldest first, at most 20.
ALTER TABLE {schema}.events ADD COLUMN history jsonb;
-- One instance's dead letters, in notification-id order (the admin listing's pages).
CREATE INDEX events_dead_by_instance ON {schema}.events (instance_id, notification_id)
    WHERE state = 3;
