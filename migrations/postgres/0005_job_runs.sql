-- When each deployment-wide job last succeeded, whichever process ran it
-- (the retention worker, `msgd retention` under cron, `msgd backup-r2 run`):
-- every `serve` instance exposes these times as metrics for the alerts.
CREATE TABLE job_runs (
    job             TEXT PRIMARY KEY,
    last_success_ms BIGINT NOT NULL
);
