//! The appliance: a single binary that keeps a durable partitioned log on an edge gateway,
//! runs WebAssembly plugins as connectors and transforms, and links edges to a hub.
//!
//! # Layout
//!
//! ```text
//! main.rs      parse the command line, load config, call app::start or a client command
//! cli/         clap commands: `run`, client commands, `demo`, `bench`
//! app.rs       wires the subsystems; the only module that knows them all
//! kafka/       the Kafka listener: Kafka's wire protocol over the log, with SASL, ACLs, quotas
//! console/     the web console: pages, sign-in and sessions; its data and actions are gRPC
//!              calls in process, as the signed-in principal
//! api/         the gRPC services and metrics over the subsystems below
//! export/      exports: a table's records continuously written to a Delta Lake table (feature
//!              `hub`, as query/; without it the binary is the lean edge build)
//! config.rs    TOML configuration and defaults
//! runtime/     the registry every long-running component lives in, one status (a watch
//!              channel per component or task), restart policies and the loop that applies them
//! transform/   the transform chain, error policy, dead letters, `appliance.*` headers
//! pipeline/    pipelines: topic -> transform chain -> topic, exactly once
//! connect/     connectors: source and sink plugins as tasks
//! link/        cluster links over QUIC: edges mirror topics to a hub and back; the
//!              protocol as state machines without I/O, under async drivers
//! query/       SQL over topics (DataFusion); on a hub, tables unite the edges' mirrors
//! plugin/      WebAssembly components (wasmtime): load, sandbox, call with limits
//! group/       consumer groups: membership, assignment, committed offsets
//! security/    principals, bearer tokens, ACLs and the table of what each gRPC method needs
//! log/         partitioned log: topics, partitions, segments, indexes, group commit, retention
//! meta/        sled-backed metadata: topic configs, specs, offsets, progress
//! ```
//!
//! Pipelines, connectors and links each keep a `runtime::Registry` of their components: one
//! async lock makes create, delete and relaunch of a name linearizable, and every task a
//! component starts is cancelled and awaited before its component is replaced or removed.
//!
//! # Data flow
//!
//! ```text
//! producer -> log::Log::append -> partition writer (group commit, fsync) -> segment files
//!                                                    |
//! consumer <- log::Log::read (whole batches <= high watermark, long-poll) <+
//! consumer offsets -> meta::Meta (sled, flushed before acknowledging)
//! ```
//!
//! Dependencies point one way, down the list above (modules on one line of
//! docs/architecture.md's table do not use each other); `appliance/tests/architecture.rs`
//! fails on an import against it. docs/architecture.md has the whole map, one record's path
//! from a source to a hub query, and the three exactly-once mechanisms.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod connect;
pub mod console;
#[cfg(feature = "hub")]
pub mod export;
pub mod group;
pub mod kafka;
pub mod link;
pub mod log;
pub mod meta;
pub mod pipeline;
pub mod plugin;
#[cfg(feature = "hub")]
pub mod query;
pub mod runtime;
pub mod security;
pub mod transform;
