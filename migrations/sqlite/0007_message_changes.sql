-- The latest state of messages edited or deleted after they were sent. The
-- edit and delete events themselves are in the conversation's log (their own
-- seqs); this table is what reads apply to the original records, which
-- segments keep immutable. `ts` is the target message's receive time:
-- retention deletes a row with its message.
CREATE TABLE message_changes (
    app_id          TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    ts              BIGINT NOT NULL,
    -- The newest edit event's seq and time, and the content it set:
    -- {"payload": …} or {"payload_base64": …, "content_type": …}.
    edit_seq        BIGINT,
    edited_at       BIGINT,
    content         TEXT,
    -- Set once deleted; delete_seq once the delete event is in the log.
    deleted_at      BIGINT,
    delete_seq      BIGINT,
    PRIMARY KEY (app_id, conversation_id, seq)
);
CREATE INDEX message_changes_ts ON message_changes (ts);
