-- Files sent in conversations: one row per upload target handed out. The
-- object is at `object_key`; `verified_at` is set once its bytes matched the
-- declared size and SHA-256, `referenced_at` each time a message names it.
CREATE TABLE attachments (
    app_id           TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    id               TEXT NOT NULL,
    object_key       TEXT NOT NULL UNIQUE,
    content_type     TEXT NOT NULL,
    size             BIGINT NOT NULL,
    sha256           TEXT NOT NULL,
    filename         TEXT,
    uploaded_by      TEXT,
    created_at       BIGINT NOT NULL,
    upload_expires_at BIGINT NOT NULL,
    verified_at      BIGINT,
    referenced_at    BIGINT,
    PRIMARY KEY (app_id, id),
    FOREIGN KEY (app_id, conversation_id) REFERENCES conversations (app_id, id) ON DELETE CASCADE
);
CREATE INDEX attachments_age_idx ON attachments (created_at);
