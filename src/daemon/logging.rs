//! Daemon logging: JSON lines on stdout (journald-friendly, `jq`-able with flat keys) or
//! pretty lines for humans. The level can be changed at run time on reload.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use super::DaemonError;
use crate::policy::{DaemonPolicy, LogFormat};

/// Lets the daemon swap the level filter when a reloaded policy changes `log_level`.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it overrides the policy, on reload too.
    env_override: bool,
    format: LogFormat,
}

impl LogHandle {
    /// Applies a new `log_level` unless `RUST_LOG` overrides it. The format cannot change
    /// without a restart (the layer is built once); a change is reported to the caller.
    pub fn apply(&self, daemon: &DaemonPolicy) -> Result<(), String> {
        if !self.env_override {
            let filter = policy_filter(&daemon.log_level).map_err(|e| e.to_string())?;
            self.filter.reload(filter).map_err(|e| e.to_string())?;
        }
        if daemon.log_format != self.format {
            return Err(format!(
                "log_format changed to {}: takes effect after a restart",
                daemon.log_format
            ));
        }
        Ok(())
    }
}

/// The filter for the policy's `log_level`. A bare level (`"info"`) is about walcompactd's
/// own events: other crates' INFO lines are their chatter, not an operator's concern
/// (tokio_cron_scheduler logs "Uninited" at every schedule rebuild), so below `debug` they
/// log only warnings and errors. At `debug` and `trace` everything shows; a directive that
/// names targets (`"walcompactd=debug,notify=info"`) is used as written, as is `RUST_LOG`.
pub fn policy_filter(log_level: &str) -> Result<EnvFilter, ParseError> {
    EnvFilter::try_new(directives(log_level))
}

/// [`policy_filter`]'s directive string.
fn directives(log_level: &str) -> String {
    let Ok(level) = log_level.trim().parse::<LevelFilter>() else {
        return log_level.to_string();
    };
    let others = if level > LevelFilter::INFO {
        level
    } else {
        level.min(LevelFilter::WARN)
    };
    format!("{others},{}={level}", env!("CARGO_CRATE_NAME"))
}

/// Installs the global subscriber. JSON events are flattened so `jq .wal` works.
pub fn init(daemon: &DaemonPolicy) -> Result<LogHandle, DaemonError> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_override = from_env.is_some();
    let filter = match from_env {
        Some(f) => f,
        None => {
            policy_filter(&daemon.log_level).map_err(|e| DaemonError::Logging(e.to_string()))?
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let output = match daemon.log_format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stdout).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| DaemonError::Logging(e.to_string()))?;
    Ok(LogHandle {
        filter: handle,
        env_override,
        format: daemon.log_format,
    })
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn a_bare_level_quiets_other_crates_below_debug() {
        assert_eq!(directives("info"), "warn,walcompactd=info");
        assert_eq!(directives(" warn "), "warn,walcompactd=warn");
        assert_eq!(directives("error"), "error,walcompactd=error");
        assert_eq!(directives("debug"), "debug,walcompactd=debug");
        assert_eq!(directives("trace"), "trace,walcompactd=trace");
    }

    #[test]
    fn directives_with_targets_are_used_as_written() {
        assert_eq!(
            directives("walcompactd=debug,warn"),
            "walcompactd=debug,warn"
        );
        assert_eq!(directives("info,notify=debug"), "info,notify=debug");
    }
}
