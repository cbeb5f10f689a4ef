-- Conversation lifecycle: archived conversations are read-only, deleted ones
-- are unreadable at once and their row goes with retention; moderators join
-- owners and members as a role.
ALTER TABLE conversations
    ADD COLUMN archived_at BIGINT,
    ADD COLUMN deleted_at BIGINT,
    ADD COLUMN updated_at BIGINT;
CREATE INDEX conversations_deleted_idx ON conversations (deleted_at) WHERE deleted_at IS NOT NULL;

ALTER TABLE members DROP CONSTRAINT members_role_check;
ALTER TABLE members ADD CONSTRAINT members_role_check CHECK (role IN ('owner', 'moderator', 'member'));
