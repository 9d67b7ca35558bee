//! Logging set-up: `tracing` with a RUST_LOG-style filter and text or JSON output.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryArgs};

/// Installs the global subscriber. Fails on a filter that does not parse, so a typo in
/// RUST_LOG is reported instead of silently logging nothing.
pub fn init(args: &TelemetryArgs) -> Result<(), String> {
    let filter = EnvFilter::try_new(&args.log_filter)
        .map_err(|e| format!("invalid log filter {:?}: {e}", args.log_filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("logging already initialised: {e}"))
}
