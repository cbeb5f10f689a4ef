-- The decompressed size of each block, so a reader can bound decompression
-- from the index alone (the footer records it too).
ALTER TABLE segment_blocks ADD COLUMN raw_length BIGINT NOT NULL DEFAULT 0;
CREATE INDEX segments_app_idx ON segments (app_id, created_at);
ALTER TABLE tail_dirty ADD COLUMN messages INTEGER NOT NULL DEFAULT 0;
