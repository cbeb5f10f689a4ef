//! The integration suite: one test binary (one link) whose modules test msgd
//! at its boundaries — the CLI, the HTTP server, the storage contracts — on
//! both backends, against real servers.

mod admin;
mod attachments;
mod authz;
mod backup;
mod check;
mod cli_config;
mod compaction;
mod edges;
mod edits;
mod faults;
mod history;
mod idempotency;
mod inbox;
mod keys;
mod lifecycle;
mod load;
mod logging;
mod messages;
mod observability;
mod presence;
mod reactions;
mod retention;
mod segments;
mod serve;
mod storage;
mod support;
mod threads;
mod tidy;
mod tokens;
mod ws;
