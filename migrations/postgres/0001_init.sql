-- msgd metadata schema (ARCHITECTURE.md, "Bird's-eye view"). Metadata only: message bodies never live here.
-- Times are Unix milliseconds (BIGINT) so the SQLite schema can mirror this one.

CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- API keys are stored only as a SHA-256 of the key; `id` is the short public
-- id embedded in the key, used for lookup and display.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    app_id        TEXT NOT NULL REFERENCES apps (id),
    name          TEXT,
    scope         TEXT NOT NULL CHECK (scope IN ('admin', 'write', 'read')),
    prefix        TEXT NOT NULL,
    secret_hash   BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT,
    rotated_to    TEXT REFERENCES api_keys (id)
);
CREATE INDEX api_keys_app_idx ON api_keys (app_id);

CREATE TABLE conversations (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    id          TEXT NOT NULL,
    title       TEXT,
    metadata    TEXT,
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, id)
);

CREATE TABLE members (
    app_id           TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at        BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id, user_id),
    FOREIGN KEY (app_id, conversation_id) REFERENCES conversations (app_id, id) ON DELETE CASCADE
);
CREATE INDEX members_user_idx ON members (app_id, user_id);

-- One row per segment object (one object per app per flush).
CREATE TABLE segments (
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL,
    object_key      TEXT NOT NULL UNIQUE,
    format_version  INTEGER NOT NULL,
    byte_length     BIGINT NOT NULL,
    record_count    BIGINT NOT NULL,
    min_ts          BIGINT NOT NULL,
    max_ts          BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX segments_max_ts_idx ON segments (max_ts);

-- One row per conversation per segment: where its block is and what it holds.
CREATE TABLE segment_blocks (
    app_id           TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    seq_start        BIGINT NOT NULL,
    seq_end          BIGINT NOT NULL,
    ts_start         BIGINT NOT NULL,
    ts_end           BIGINT NOT NULL,
    segment_id       TEXT NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    byte_offset      BIGINT NOT NULL,
    byte_length      BIGINT NOT NULL,
    record_count     BIGINT NOT NULL,
    checksum         BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id, seq_start),
    CHECK (seq_end >= seq_start)
);
CREATE INDEX segment_blocks_segment_idx ON segment_blocks (segment_id);

-- The highest seq of each conversation that is durably in a segment.
CREATE TABLE flush_state (
    app_id           TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    flushed_seq      BIGINT NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id)
);
