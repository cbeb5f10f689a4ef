//! msgd: a self-hosted real-time messaging backend. This library is shared by
//! every subcommand of the `msgd` binary (in `cli/`); the module map and the
//! rules between modules are in ARCHITECTURE.md.

pub mod activity;
pub mod attachments;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod config;
pub mod context;
pub mod conversations;
pub mod edits;
pub mod envelope;
pub mod error;
pub mod flush;
pub mod history;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod inspect;
pub mod keys;
pub mod load;
pub mod logging;
pub mod mac;
pub mod membership;
pub mod messages;
pub mod presence;
pub mod ratelimit;
pub mod reactions;
pub mod readiness;
pub mod receipts;
pub mod retention;
pub mod segment;
pub mod server;
pub mod stats;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
pub mod timeline;
pub mod typing;
pub mod worker;
