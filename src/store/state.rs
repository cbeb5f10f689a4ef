//! Ephemeral state: small TTL'd hashes (receipt marks), kept for a bounded
//! time and never in segments. Redis expires them by itself; the embedded
//! tail's SQLite tables are purged by the flush worker.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

#[async_trait]
pub trait TtlState: Send + Sync {
    /// Sets one field of a TTL'd hash (e.g. one member's receipt marks); the
    /// whole hash expires `ttl` after its last write.
    async fn state_set(&self, key: &str, field: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;

    /// Raises numeric fields of one TTL'd hash, each to its value when it is
    /// lower (never lowers one), in order, in one step; returns each field's
    /// value afterwards.
    async fn state_raise_many(
        &self,
        key: &str,
        raises: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError>;

    /// [`TtlState::state_raise_many`] for one field.
    async fn state_raise(&self, key: &str, field: &str, value: u64, ttl: Duration) -> Result<u64, StoreError> {
        let raised = self.state_raise_many(key, &[(field.to_string(), value)], ttl).await?;
        raised.first().copied().ok_or_else(|| StoreError::Corrupt { dependency: "state", message: "no raise".into() })
    }

    /// Removes fields of a TTL'd hash (absent ones are no error).
    async fn state_remove(&self, key: &str, fields: &[String]) -> Result<(), StoreError>;

    /// All live fields of a TTL'd hash, sorted by field.
    async fn state_get(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Deletes expired hashes where the store does not expire them by itself;
    /// returns how many rows were removed.
    async fn purge_expired(&self) -> Result<u64, StoreError>;
}
