-- Emoji reactions: one row per (message, reaction, user). `ts` is the
-- message's receive time: retention deletes a row with its message.
CREATE TABLE message_reactions (
    app_id          TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    reaction        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    ts              BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id, seq, reaction, user_id)
);
CREATE INDEX message_reactions_ts ON message_reactions (ts);
