//! Backups to any S3 endpoint (Cloudflare R2 by design): run, list, verify,
//! restore, prune (ARCHITECTURE.md, "Backups"). One [`Backup`] per target,
//! driven by `msgd backup-r2`.
//!
//! Layout under `backup.prefix`:
//! - `objects/<key>`: a copy of each segment object, shared by every backup
//!   that lists it. Source objects are immutable once written, so a copy is
//!   made once and later backups only reference it (incremental).
//! - `backups/<id>/metadata.json.zst`: the metadata snapshot (every table but
//!   the segment index, read in one transaction), zstd-compressed JSON rows:
//!   independent of the database's version and engine, so a backup of one
//!   backend restores into the other.
//! - `backups/<id>/manifest.json`: written last. It names the msgd and schema
//!   versions, the row count per table, and every object with its size,
//!   SHA-256 and newest message time. A backup without a manifest is
//!   incomplete and never used.
//!
//! A run flushes first, so every message acknowledged before it started is in
//! a segment: that is the backup's recovery point. A restore loads the
//! snapshot, copies the objects back (never one past the retention window)
//! and rebuilds the segment index from their footers; seqs continue from the
//! restored flush state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{BackupConfig, Config};
use crate::flush::{FlushOptions, Flusher};
use crate::segment::Segment;
use crate::store::{Metadata, MetadataSnapshot, Objects, StoreError, Stores};
use crate::telemetry::Metrics;

/// The manifest format this release writes and reads.
const MANIFEST_FORMAT: u32 = 1;
/// The zstd level of the metadata snapshot.
const SNAPSHOT_LEVEL: i32 = 9;
const DAY_MS: i64 = 86_400_000;
/// Listings of the index a copy makes at most while compaction keeps replacing segments.
const COPY_ROUNDS: usize = 3;
/// An incomplete backup younger than this may still be running: prune spares it.
const INCOMPLETE_GRACE_MS: i64 = DAY_MS;

/// Logs a backup event with the `component` and `worker` fields every backup line carries.
macro_rules! backup_event {
    ($level:ident, $($fields:tt)+) => {
        tracing::$level!(component = "backup", worker = "backup", $($fields)+)
    };
}

/// `progress(done, total)`, in objects.
type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// One object a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// The source key (`segments/…`, `attachments/…`); the copy is at `<prefix>objects/<key>`.
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// Receive time of the newest message inside, or when a message last
    /// referenced an attachment (Unix ms): past the retention window, the
    /// copy is pruned and never restored.
    pub max_ts: i64,
}

impl ObjectEntry {
    fn of(key: &str, bytes: &[u8], max_ts: i64) -> ObjectEntry {
        ObjectEntry { key: key.to_string(), size: bytes.len() as u64, sha256: sha256_hex(bytes), max_ts }
    }
}

/// The metadata snapshot file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// What a complete backup holds; written last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: String,
    /// When the run started (its recovery point), Unix ms.
    pub created_at_ms: i64,
    pub msgd_version: String,
    pub schema_version: i64,
    /// `embedded` or `services`: where it was taken (it restores into either).
    pub deployment: String,
    pub tables: BTreeMap<String, u64>,
    pub metadata: FileEntry,
    pub objects: Vec<ObjectEntry>,
}

/// What `run` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub backup_id: String,
    pub created_at_ms: i64,
    /// Objects the backup lists, and those copied now (the rest were there).
    pub objects: u64,
    pub objects_copied: u64,
    pub bytes: u64,
    pub bytes_copied: u64,
    pub metadata_bytes: u64,
    pub tables: BTreeMap<String, u64>,
    pub flushed_segments: u64,
    pub pruned: PruneReport,
}

/// One backup as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub backup_id: String,
    /// When the run started (its recovery point): from the manifest, or from the id when incomplete.
    pub created_at_ms: i64,
    /// When the manifest was written; `None` when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<i64>,
    pub complete: bool,
    pub objects: u64,
    pub bytes: u64,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub backup_id: String,
    pub full: bool,
    pub objects_checked: u64,
    /// Objects past the retention window: pruned on purpose, not checked.
    pub objects_expired: u64,
    pub problems: Vec<Problem>,
}

/// A bad object: which, and what is wrong with it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub key: String,
    pub problem: String,
}

/// What `restore` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub tables: BTreeMap<String, u64>,
    pub objects_restored: u64,
    /// Past the retention window now: left out.
    pub objects_expired: u64,
    pub segments_indexed: u64,
}

/// What `prune` deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub backups_kept: u64,
    pub backups_deleted: u64,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
}

/// Why a backup command failed: the stage (the `stage` log field, what
/// runbooks/backup-restore.md is organised by) and what went wrong.
#[derive(Debug)]
pub struct BackupError {
    pub stage: &'static str,
    pub message: String,
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backup stage {} failed: {}", self.stage, self.message)
    }
}

impl std::error::Error for BackupError {}

fn failed(stage: &'static str) -> impl Fn(StoreError) -> BackupError {
    move |e| BackupError { stage, message: e.to_string() }
}

fn refused(stage: &'static str, message: impl Into<String>) -> BackupError {
    BackupError { stage, message: message.into() }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A backup id: sortable by time (`20261128T041500Z-1a2b3c`).
fn new_backup_id(now: i64) -> String {
    let stamp = crate::clock::format_ms(now); // 2026-11-28T04:15:00.123Z
    let compact: String = stamp[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{compact}Z-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// The time a backup id names, for incomplete backups (no manifest).
fn id_time(id: &str) -> Option<i64> {
    let stamp = id.get(..15)?; // 20261128T041500
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        stamp.get(0..4)?,
        stamp.get(4..6)?,
        stamp.get(6..8)?,
        stamp.get(9..11)?,
        stamp.get(11..13)?,
        stamp.get(13..15)?
    );
    let time = humantime::parse_rfc3339(&text).ok()?;
    Some(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

pub struct Backup {
    stores: Stores,
    target: Objects,
    config: BackupConfig,
    flush: crate::config::FlushConfig,
    retention_ms: i64,
    metrics: Metrics,
}

impl Backup {
    /// The backup target `[backup]` names, over these stores.
    pub fn new(stores: Stores, config: &Config, metrics: Metrics) -> anyhow::Result<Backup> {
        let Some(backup) = config.backup.clone() else {
            anyhow::bail!(
                "no [backup] section in the config: set backup.endpoint, bucket, access_key_id and secret_access_key"
            )
        };
        let target = Objects::s3(&backup.target(), &metrics)?;
        Ok(Backup {
            stores,
            target,
            config: backup,
            flush: config.flush.clone(),
            retention_ms: config.retention.period_ms(),
            metrics,
        })
    }

    /// The target's location, for messages.
    pub fn target(&self) -> &Objects {
        &self.target
    }

    fn object_key(&self, key: &str) -> String {
        format!("{}objects/{key}", self.config.prefix)
    }

    fn backup_dir(&self, id: &str) -> String {
        format!("{}backups/{id}/", self.config.prefix)
    }

    fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(self.retention_ms)
    }

    /// One backup at `now`: flush, snapshot, objects, manifest, then prune.
    pub async fn run(&self, now: i64, progress: Progress<'_>) -> Result<RunReport, BackupError> {
        let started = Instant::now();
        let mut report = RunReport { backup_id: new_backup_id(now), created_at_ms: now, ..Default::default() };
        backup_event!(info, "tick-id" = %report.backup_id, "backup run start");
        let result = self.run_stages(&mut report, now, progress).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(()) => {
                self.metrics.backup_last_success_timestamp_seconds.set(now as f64 / 1000.0);
                // For the alert on every `serve` instance, which polls this.
                if let Err(e) = self.stores.metadata.record_job_success("backup", now).await {
                    backup_event!(warn, error = %e, "backup success not recorded in the metadata store");
                }
                backup_event!(
                    info,
                    "tick-id" = %report.backup_id,
                    "duration-ms" = duration_ms,
                    objects = report.objects,
                    "objects-copied" = report.objects_copied,
                    "payload-bytes" = report.bytes_copied,
                    success = true,
                    "backup run complete"
                );
            }
            Err(e) => backup_event!(
                error,
                "tick-id" = %report.backup_id,
                "duration-ms" = duration_ms,
                stage = e.stage,
                "error.kind" = e.stage,
                "error.message" = %e.message,
                success = false,
                "backup run failed"
            ),
        }
        result.map(|()| report)
    }

    async fn run_stages(&self, report: &mut RunReport, now: i64, progress: Progress<'_>) -> Result<(), BackupError> {
        let flusher = Flusher::new(self.stores.clone(), self.metrics.clone(), self.flush.clone());
        let flushed = flusher
            .tick(FlushOptions { all: true, dry_run: false }, now)
            .await
            .map_err(|e| refused("flush", e.to_string()))?;
        report.flushed_segments = flushed.segments.len() as u64;
        let snapshot = self.stores.metadata.export_snapshot().await.map_err(failed("snapshot"))?;
        report.tables = snapshot.row_counts();
        let metadata = self.write_snapshot(&report.backup_id, &snapshot).await?;
        report.metadata_bytes = metadata.size;
        let objects = self.copy_objects(report, &snapshot, now, progress).await?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            backup_id: report.backup_id.clone(),
            created_at_ms: now,
            msgd_version: env!("CARGO_PKG_VERSION").to_string(),
            schema_version: Metadata::schema_version(),
            deployment: self.stores.deployment.as_str().to_string(),
            tables: report.tables.clone(),
            metadata,
            objects,
        };
        let bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        let key = format!("{}manifest.json", self.backup_dir(&report.backup_id));
        self.target.put(&key, bytes).await.map_err(failed("manifest"))?;
        report.pruned = self.prune(now).await?;
        Ok(())
    }

    async fn write_snapshot(&self, id: &str, snapshot: &MetadataSnapshot) -> Result<FileEntry, BackupError> {
        let json = serde_json::to_vec(snapshot).expect("a snapshot serializes");
        let bytes =
            zstd::encode_all(json.as_slice(), SNAPSHOT_LEVEL).map_err(|e| refused("snapshot", e.to_string()))?;
        let entry = FileEntry {
            key: format!("{}metadata.json.zst", self.backup_dir(id)),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        let part_size = self.config.multipart_part_size as usize;
        self.target.put_object(&entry.key, bytes, part_size).await.map_err(failed("snapshot"))?;
        Ok(entry)
    }

    /// `copy`: every indexed segment and every checked attachment of the
    /// snapshot inside the window, copied unless the target has it already
    /// (with the hash the last manifest recorded, or read back after an
    /// interrupted run). Compaction may replace segments while the copy runs,
    /// so each round lists the index again: what it replaced drops out, what
    /// it wrote is copied, until one listing is copied whole — the index of
    /// one moment, as the manifest must hold.
    async fn copy_objects(
        &self,
        report: &mut RunReport,
        snapshot: &MetadataSnapshot,
        now: i64,
        progress: Progress<'_>,
    ) -> Result<Vec<ObjectEntry>, BackupError> {
        let cutoff = self.cutoff(now);
        let present: HashMap<String, u64> = self
            .target
            .list_detailed(&format!("{}objects/", self.config.prefix))
            .await
            .map_err(failed("copy"))?
            .into_iter()
            .map(|(key, size, _)| (key, size))
            .collect();
        let known: HashMap<String, ObjectEntry> = match self.latest_manifest().await? {
            Some(manifest) => manifest.objects.into_iter().map(|o| (o.key.clone(), o)).collect(),
            None => HashMap::new(),
        };
        let mut entries: Vec<ObjectEntry> = Vec::new();
        for _ in 0..COPY_ROUNDS {
            let sources = self.sources(snapshot, cutoff).await?;
            let listed: BTreeSet<&str> = sources.iter().map(|(key, _)| key.as_str()).collect();
            entries.retain(|entry| listed.contains(entry.key.as_str()));
            let copied: BTreeSet<String> = entries.iter().map(|entry| entry.key.clone()).collect();
            let todo: Vec<(String, i64)> = sources.into_iter().filter(|(key, _)| !copied.contains(key)).collect();
            if todo.is_empty() {
                report.objects = entries.len() as u64;
                report.bytes = entries.iter().map(|entry| entry.size).sum();
                return Ok(entries);
            }
            let total = (entries.len() + todo.len()) as u64;
            progress(entries.len() as u64, total);
            for (key, max_ts) in todo {
                match self.copy_one(report, &key, max_ts, &present, &known).await {
                    Ok(entry) => entries.push(entry),
                    // Replaced by a compaction since the listing: the next round has its successor.
                    Err(_) if self.replaced(&key).await? => continue,
                    Err(e) => return Err(e),
                }
                progress(entries.len() as u64, total);
            }
        }
        Err(refused("copy", format!("the segment index changed in each of {COPY_ROUNDS} listings; retry")))
    }

    /// (source key, newest message time) of every indexed segment and every
    /// checked attachment inside the window: what retention and prune go by.
    async fn sources(&self, snapshot: &MetadataSnapshot, cutoff: i64) -> Result<Vec<(String, i64)>, BackupError> {
        let segments = self.stores.metadata.segments_since(cutoff).await.map_err(failed("copy"))?;
        Ok(segments
            .into_iter()
            .map(|segment| (segment.object_key, segment.max_ts))
            .chain(snapshot.attachments.iter().filter(|a| a.verified_at.is_some()).filter_map(|a| {
                let newest = a.referenced_at.unwrap_or(a.created_at);
                (newest >= cutoff).then(|| (a.object_key.clone(), newest))
            }))
            .collect())
    }

    /// Whether `key` is a segment the index no longer lists.
    async fn replaced(&self, key: &str) -> Result<bool, BackupError> {
        let row = self.stores.metadata.segment_by_key(key).await.map_err(failed("copy"))?;
        Ok(key.starts_with("segments/") && row.is_none())
    }

    /// One source object in the target: already there, or copied now.
    async fn copy_one(
        &self,
        report: &mut RunReport,
        key: &str,
        max_ts: i64,
        present: &HashMap<String, u64>,
        known: &HashMap<String, ObjectEntry>,
    ) -> Result<ObjectEntry, BackupError> {
        let copy_key = self.object_key(key);
        match (present.get(&copy_key), known.get(key)) {
            (Some(size), Some(entry)) if *size == entry.size => Ok(entry.clone()),
            (Some(_), _) => {
                // Copied by an interrupted run: hash what is there instead of copying again.
                let bytes = self.target.get(&copy_key).await.map_err(failed("copy"))?;
                Ok(ObjectEntry::of(key, &bytes, max_ts))
            }
            (None, _) => {
                let bytes = self.stores.objects.get(key).await.map_err(failed("copy"))?;
                let entry = ObjectEntry::of(key, &bytes, max_ts);
                let part_size = self.config.multipart_part_size as usize;
                self.target.put_object(&copy_key, bytes, part_size).await.map_err(failed("copy"))?;
                report.objects_copied += 1;
                report.bytes_copied += entry.size;
                self.metrics.backup_objects_total.inc();
                self.metrics.backup_bytes_total.inc_by(entry.size);
                self.failpoint("after-first-copy").await;
                Ok(entry)
            }
        }
    }

    /// Testing only: stops the run here, forever, when `backup.failpoint` names this point.
    async fn failpoint(&self, point: &'static str) {
        if self.config.failpoint.as_deref() == Some(point) {
            backup_event!(warn, failpoint = point, "failpoint reached: stopping the run here");
            std::future::pending::<()>().await;
        }
    }

    /// Every backup under the prefix, oldest first, complete or not.
    pub async fn list(&self) -> Result<Vec<BackupSummary>, BackupError> {
        // Backup id → when its manifest was written, if it was.
        let mut ids: BTreeMap<String, Option<i64>> = BTreeMap::new();
        let prefix = format!("{}backups/", self.config.prefix);
        for (key, _, modified) in self.target.list_detailed(&prefix).await.map_err(failed("list"))? {
            if let Some((id, file)) = key[prefix.len()..].split_once('/') {
                let completed = ids.entry(id.to_string()).or_default();
                if file == "manifest.json" {
                    *completed = Some(modified);
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, completed_at_ms) in ids {
            let summary = match completed_at_ms {
                Some(_) => {
                    let manifest = self.manifest(&id).await?;
                    BackupSummary {
                        backup_id: id,
                        created_at_ms: manifest.created_at_ms,
                        completed_at_ms,
                        complete: true,
                        objects: manifest.objects.len() as u64,
                        bytes: manifest.objects.iter().map(|o| o.size).sum::<u64>() + manifest.metadata.size,
                    }
                }
                None => {
                    let created_at_ms = id_time(&id).unwrap_or(0);
                    BackupSummary {
                        backup_id: id,
                        created_at_ms,
                        completed_at_ms,
                        complete: false,
                        objects: 0,
                        bytes: 0,
                    }
                }
            };
            out.push(summary);
        }
        out.sort_by(|a, b| (a.created_at_ms, &a.backup_id).cmp(&(b.created_at_ms, &b.backup_id)));
        Ok(out)
    }

    /// The id of the newest complete backup.
    pub async fn latest_id(&self) -> Result<String, BackupError> {
        let backups = self.list().await?;
        backups
            .into_iter()
            .rev()
            .find(|b| b.complete)
            .map(|b| b.backup_id)
            .ok_or_else(|| refused("list", format!("no complete backup in {}", self.target.location())))
    }

    async fn latest_manifest(&self) -> Result<Option<Manifest>, BackupError> {
        let backups = self.list().await?;
        match backups.into_iter().rev().find(|b| b.complete) {
            Some(latest) => Ok(Some(self.manifest(&latest.backup_id).await?)),
            None => Ok(None),
        }
    }

    /// The manifest of backup `id`; refused when there is none (incomplete, or no such backup).
    pub async fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        let key = format!("{}manifest.json", self.backup_dir(id));
        let bytes = match self.target.get(&key).await {
            Ok(bytes) => bytes,
            Err(_) if !self.target.list(&self.backup_dir(id)).await.map_err(failed("read-manifest"))?.is_empty() => {
                return Err(refused(
                    "read-manifest",
                    format!("backup {id} has no manifest: it is incomplete and never used"),
                ));
            }
            Err(e) => return Err(refused("read-manifest", format!("no backup {id}: {e}"))),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| refused("read-manifest", format!("the manifest of {id} is unreadable: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            let message = format!("manifest format {} of {id} is not {MANIFEST_FORMAT}", manifest.format);
            return Err(refused("read-manifest", message));
        }
        Ok(manifest)
    }

    /// Checks backup `id` against the target: every object (and the snapshot)
    /// present with its size; `full` also re-reads each, checks its SHA-256
    /// and decodes every segment's footer.
    pub async fn verify(&self, id: &str, full: bool, now: i64) -> Result<VerifyReport, BackupError> {
        let manifest = self.manifest(id).await?;
        let mut report = VerifyReport { backup_id: id.to_string(), full, ..Default::default() };
        let cutoff = self.cutoff(now);
        let metadata = (manifest.metadata.key.clone(), manifest.metadata.size, manifest.metadata.sha256.clone());
        let objects = manifest.objects.iter().filter(|o| {
            let expired = o.max_ts < cutoff;
            report.objects_expired += u64::from(expired);
            !expired
        });
        let checks: Vec<(String, String, u64, String)> =
            std::iter::once((metadata.0.clone(), metadata.0, metadata.1, metadata.2))
                .chain(objects.map(|o| (o.key.clone(), self.object_key(&o.key), o.size, o.sha256.clone())))
                .collect();
        for (name, key, size, sha256) in checks {
            report.objects_checked += 1;
            if let Some(problem) = self.check_object(&name, &key, size, &sha256, full).await {
                backup_event!(warn, "tick-id" = %id, "storage.key" = %key, problem = %problem, "backup object is bad");
                report.problems.push(Problem { key: name, problem });
            }
        }
        Ok(report)
    }

    async fn check_object(&self, name: &str, key: &str, size: u64, sha256: &str, full: bool) -> Option<String> {
        match self.target.size(key).await {
            Err(e) => return Some(format!("missing or unreadable: {e}")),
            Ok(found) if found != size => return Some(format!("{found} bytes, the manifest says {size}")),
            Ok(_) => {}
        }
        if !full {
            return None;
        }
        let bytes = match self.target.get(key).await {
            Ok(bytes) => bytes,
            Err(e) => return Some(format!("unreadable: {e}")),
        };
        if sha256_hex(&bytes) != sha256 {
            return Some("SHA-256 differs from the manifest".into());
        }
        if name.starts_with("segments/") {
            if let Err(e) = Segment::parse(&bytes) {
                return Some(format!("not a readable segment: {e}"));
            }
        }
        None
    }

    /// Restores backup `id` into this deployment, which must be empty unless
    /// `force`: the metadata snapshot, then every object inside the window,
    /// then the segment index rebuilt from their footers.
    pub async fn restore(&self, id: &str, force: bool, now: i64) -> Result<RestoreReport, BackupError> {
        let manifest = self.manifest(id).await?;
        if !force {
            self.require_empty().await?;
        }
        let mut report =
            RestoreReport { backup_id: id.to_string(), tables: manifest.tables.clone(), ..Default::default() };
        let bytes = self.target.get(&manifest.metadata.key).await.map_err(failed("restore-metadata"))?;
        if sha256_hex(&bytes) != manifest.metadata.sha256 {
            return Err(refused(
                "restore-metadata",
                format!("{}: SHA-256 differs from the manifest", manifest.metadata.key),
            ));
        }
        let json = zstd::decode_all(bytes.as_slice()).map_err(|e| refused("restore-metadata", e.to_string()))?;
        let snapshot: MetadataSnapshot = serde_json::from_slice(&json)
            .map_err(|e| refused("restore-metadata", format!("unreadable snapshot: {e}")))?;
        self.stores.metadata.import_snapshot(&snapshot).await.map_err(failed("restore-metadata"))?;
        let cutoff = self.cutoff(now);
        for object in &manifest.objects {
            if object.max_ts < cutoff {
                report.objects_expired += 1;
                continue;
            }
            let bytes = self.target.get(&self.object_key(&object.key)).await.map_err(failed("restore-objects"))?;
            if sha256_hex(&bytes) != object.sha256 {
                return Err(refused("restore-objects", format!("{}: SHA-256 differs from the manifest", object.key)));
            }
            let part_size = self.config.multipart_part_size as usize;
            self.stores.objects.put_object(&object.key, bytes, part_size).await.map_err(failed("restore-objects"))?;
            report.objects_restored += 1;
        }
        let flusher = Flusher::new(self.stores.clone(), self.metrics.clone(), self.flush.clone());
        let reindexed = flusher.reindex().await.map_err(|e| refused("reindex", e.to_string()))?;
        report.segments_indexed = reindexed.indexed;
        backup_event!(
            info,
            "tick-id" = %id,
            objects = report.objects_restored,
            "objects-expired" = report.objects_expired,
            success = true,
            "backup restored"
        );
        Ok(report)
    }

    async fn require_empty(&self) -> Result<(), BackupError> {
        let no_apps = self.stores.metadata.has_no_apps().await.map_err(failed("restore-check"))?;
        let objects = self.stores.objects.list("segments/").await.map_err(failed("restore-check"))?;
        if no_apps && objects.is_empty() {
            return Ok(());
        }
        Err(refused(
            "restore-check",
            "this deployment is not empty (it has apps or segments); restore into a fresh one, or pass --force \
             to add the backup's rows and objects to what is there",
        ))
    }

    /// Keeps the newest complete backup of each of the last `backup.keep`
    /// days that have one; deletes the other backups, then every object no
    /// kept manifest references inside the retention window.
    /// An incomplete backup is deleted once a newer one is complete and it
    /// is a day old: a younger one may be a run still going on another host.
    pub async fn prune(&self, now: i64) -> Result<PruneReport, BackupError> {
        let mut report = PruneReport::default();
        let backups = self.list().await?;
        let mut kept_days = BTreeSet::new();
        let mut kept = Vec::new();
        for backup in backups.iter().rev().filter(|b| b.complete) {
            let day = backup.created_at_ms.div_euclid(DAY_MS);
            if kept_days.contains(&day) || kept_days.len() >= self.config.keep as usize {
                continue;
            }
            kept_days.insert(day);
            kept.push(backup.backup_id.clone());
        }
        // A run in progress started after the newest kept backup; its copies
        // are newer than that backup's manifest. Both are spared.
        let kept_backups = || backups.iter().filter(|b| kept.contains(&b.backup_id));
        let newest_kept = kept_backups().map(|b| b.created_at_ms).max();
        let newest_manifest = kept_backups().filter_map(|b| b.completed_at_ms).max();
        for backup in &backups {
            let in_progress = !backup.complete
                && (newest_kept.is_none_or(|newest| backup.created_at_ms >= newest)
                    || backup.created_at_ms > now - INCOMPLETE_GRACE_MS);
            if kept.contains(&backup.backup_id) || in_progress {
                continue;
            }
            self.delete_backup(&backup.backup_id).await?;
            report.backups_deleted += 1;
        }
        report.backups_kept = kept.len() as u64;
        let Some(newest_manifest) = newest_manifest else { return Ok(report) };
        let cutoff = self.cutoff(now);
        let mut referenced = BTreeSet::new();
        for id in &kept {
            let manifest = self.manifest(id).await?;
            referenced
                .extend(manifest.objects.into_iter().filter(|o| o.max_ts >= cutoff).map(|o| self.object_key(&o.key)));
        }
        let copies =
            self.target.list_detailed(&format!("{}objects/", self.config.prefix)).await.map_err(failed("prune"))?;
        for (key, size, modified) in copies {
            if referenced.contains(&key) || modified > newest_manifest {
                continue;
            }
            self.target.delete(&key).await.map_err(failed("prune"))?;
            report.objects_deleted += 1;
            report.bytes_deleted += size;
        }
        backup_event!(
            info,
            kept = report.backups_kept,
            "backups-deleted" = report.backups_deleted,
            "objects-deleted" = report.objects_deleted,
            "backup prune complete"
        );
        Ok(report)
    }

    /// Deletes a backup's files, its manifest first: from then on it counts as incomplete.
    async fn delete_backup(&self, id: &str) -> Result<(), BackupError> {
        let dir = self.backup_dir(id);
        self.target.delete(&format!("{dir}manifest.json")).await.map_err(failed("prune"))?;
        for key in self.target.list(&dir).await.map_err(failed("prune"))? {
            self.target.delete(&key).await.map_err(failed("prune"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_name_it() {
        let id = new_backup_id(1_795_838_999_929); // 2026-11-12T...
        assert_eq!(id_time(&id), Some(1_795_838_999_000));
        assert!(new_backup_id(1_795_838_999_929) < new_backup_id(1_795_839_999_929));
        assert_eq!(id_time("nonsense"), None);
    }
}
