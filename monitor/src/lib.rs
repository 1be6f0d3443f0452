//! secretmon: an eBPF monitor of static-secret use.
//!
//! Pipeline: `probes` (kernel) → `pipeline` (process table, inventory,
//! identity; `discovery` inspects new files off the drain) → `ledger` →
//! `findings` → `outputs` (stdout, files, syslog, HTTP; native or `ocsf`).
//! `agent` drives it and routes what the pipeline produces; `metrics`
//! serves its health; `check` reports what the kernel supports;
//! `findings::report` prints the ledger's picture. `commands` runs one parsed command line; the
//! binary (`main.rs`) only sets up the process around it.

pub mod agent;
pub mod assets;
pub mod bounded;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod coverage;
pub mod discovery;
pub mod durations;
pub mod env_names;
pub mod errors;
pub mod event;
pub mod features;
pub mod findings;
pub mod fleet;
pub mod html;
pub mod identity;
pub mod inventory;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod name_rules;
pub mod ocsf;
pub mod offsets;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod probes;
pub mod process;
pub mod redact;
pub mod reload;
pub mod secret;
pub mod secure_fs;
pub mod service;
pub mod terminal;
pub mod watch_map;
