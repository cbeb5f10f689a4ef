-- Keys every instance must share, generated once by whichever instance needs
-- one first (e.g. the HMAC key of history cursors).
CREATE TABLE server_secrets (
    name        TEXT PRIMARY KEY,
    value       BLOB NOT NULL,
    created_at  BIGINT NOT NULL
);
