-- Conversation lifecycle, mirroring migrations/postgres: archived
-- conversations are read-only, deleted ones are unreadable at once and their
-- row goes with retention; moderators join owners and members as a role.
ALTER TABLE conversations ADD COLUMN archived_at BIGINT;
ALTER TABLE conversations ADD COLUMN deleted_at BIGINT;
ALTER TABLE conversations ADD COLUMN updated_at BIGINT;
CREATE INDEX conversations_deleted_idx ON conversations (deleted_at) WHERE deleted_at IS NOT NULL;

-- SQLite cannot alter a CHECK constraint: the table is rebuilt (nothing
-- references it).
CREATE TABLE members_new (
    app_id           TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    joined_at        BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id, user_id),
    FOREIGN KEY (app_id, conversation_id) REFERENCES conversations (app_id, id) ON DELETE CASCADE
);
INSERT INTO members_new (app_id, conversation_id, user_id, role, joined_at)
    SELECT app_id, conversation_id, user_id, role, joined_at FROM members;
DROP TABLE members;
ALTER TABLE members_new RENAME TO members;
CREATE INDEX members_user_idx ON members (app_id, user_id);
