//! The agent's own logs: to stderr (stdout is for events), as the `[log]`
//! settings say.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Install the global subscriber. Called once, after the configuration is
/// read; an error before then is printed by the binary as one line.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::new(settings.level.as_str());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    // A second init (tests calling commands twice) keeps the first.
    let _already_set = match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
