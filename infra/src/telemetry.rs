//! Logging and tracing set-up: `tracing` with a RUST_LOG-style filter and text or JSON
//! output, and OpenTelemetry span export when `--otlp-endpoint` is set (`crate::traces`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::{
    config::{LogFormat, TelemetryArgs},
    traces::{self, Traces},
};

/// Installs the global subscriber and, with an OTLP endpoint, the span exporter of `service`
/// (keep the returned guard until exit: dropping it flushes the last spans). Fails on a
/// filter that does not parse, so a typo in RUST_LOG is reported instead of silently
/// logging nothing.
pub fn init(args: &TelemetryArgs, service: &'static str) -> Result<Traces, String> {
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
    result.map_err(|e| format!("logging already initialised: {e}"))?;
    traces::init(args.otlp_endpoint.as_deref(), service)
}
