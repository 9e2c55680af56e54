-- Version 6: the trace each event belongs to (the propagation fields of the request's context,
-- `[["traceparent","00-…"],["tracestate","…"]]`), so that a job resumed or a notification taken
-- over by another node still belongs to the caller's trace. NULL: the event has none.

ALTER TABLE {schema}.events
    ADD COLUMN trace text;
