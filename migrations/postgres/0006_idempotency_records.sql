-- The idempotency keys of flushed messages, for the idempotency window: one
-- row per conversation per flushed range, 16 bytes per keyed message (key
-- hash, seq). The tail's in-memory claims are released once their row is
-- written; retention deletes rows past the window.
CREATE TABLE idempotency_records (
    app_id          TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq_start       BIGINT NOT NULL,
    seq_end         BIGINT NOT NULL,
    ts_end          BIGINT NOT NULL,
    entries         BYTEA NOT NULL,
    PRIMARY KEY (app_id, conversation_id, seq_end)
);
CREATE INDEX idempotency_records_ts_end ON idempotency_records (ts_end);
