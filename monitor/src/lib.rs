//! secretmon: an eBPF monitor of static-secret use.
//!
//! Pipeline: `probes` (kernel) → `pipeline` (process table, inventory,
//! identity) → `ledger` → `findings` → `sink` (JSON lines). `agent` drives
//! it; `check` reports what the kernel supports; `findings::report` prints
//! the ledger's picture. `commands` runs one parsed command line; the
//! binary (`main.rs`) only sets up the process around it.

pub mod agent;
pub mod assets;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod durations;
pub mod env_names;
pub mod errors;
pub mod event;
pub mod findings;
pub mod identity;
pub mod inventory;
pub mod ledger;
pub mod logging;
pub mod name_rules;
pub mod offsets;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod probes;
pub mod process;
pub mod redact;
pub mod reload;
pub mod secret;
pub mod service;
pub mod sink;
