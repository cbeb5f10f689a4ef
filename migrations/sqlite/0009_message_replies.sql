-- Replies: one row per message sent with `reply_to`, under the message it
-- replies to (its thread). `ts` is the reply's receive time: retention
-- deletes a row with its reply.
CREATE TABLE message_replies (
    app_id          TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    parent_seq      BIGINT NOT NULL,
    seq             BIGINT NOT NULL,
    ts              BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id, parent_seq, seq)
);
CREATE INDEX message_replies_ts ON message_replies (ts);
