-- Seq ranges the consistency check found lost (in neither the tail nor the
-- segments) and an operator accepted with `msgd flush --check --accept-loss`:
-- later checks no longer report them. A range only grows (seq_to is raised).
CREATE TABLE accepted_losses (
    app_id           TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    seq_from         BIGINT NOT NULL,
    seq_to           BIGINT NOT NULL,
    accepted_at      BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id, seq_from),
    CHECK (seq_to >= seq_from)
);
