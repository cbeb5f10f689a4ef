-- The inbox, mirroring migrations/postgres: conversations ordered by their
-- newest message (written about once a second by the activity worker), and a
-- mute flag per member.
ALTER TABLE conversations ADD COLUMN last_activity_at BIGINT;
ALTER TABLE members ADD COLUMN muted BOOLEAN NOT NULL DEFAULT FALSE;
