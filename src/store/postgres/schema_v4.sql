-- Version 4: each job's last progress report (not durable: written with synchronous_commit off,
-- at most once a second per event).

ALTER TABLE {schema}.events
    ADD COLUMN progress_percent smallint,
    ADD COLUMN progress_message text,
    ADD COLUMN progress_at_ms   bigint;
