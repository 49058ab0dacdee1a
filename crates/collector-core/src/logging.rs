//! Logging through `tracing`: `RUST_LOG` wins, otherwise `info` (or `debug`
//! with [`CollectorConfig::with_debug_logging`](crate::CollectorConfig::with_debug_logging)).

use tracing_subscriber::EnvFilter;

/// The filter the runtime installs: `rust_log` (the value of `RUST_LOG`) when
/// it is set and parses, else `debug` or `info`.
pub fn log_filter(debug: bool, rust_log: Option<&str>) -> EnvFilter {
    let default = if debug { "debug" } else { "info" };
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Installs a global `tracing` subscriber writing to stderr, unless the
/// application installed one already. Returns whether this call installed it.
pub fn init_logging(debug: bool) -> bool {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(debug, rust_log.as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;

    use super::*;

    #[test]
    fn rust_log_wins_over_the_debug_flag() {
        assert_eq!(
            log_filter(false, None).max_level_hint(),
            Some(LevelFilter::INFO)
        );
        assert_eq!(
            log_filter(true, None).max_level_hint(),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(
            log_filter(true, Some("warn")).max_level_hint(),
            Some(LevelFilter::WARN)
        );
        assert_eq!(
            log_filter(false, Some("trace")).max_level_hint(),
            Some(LevelFilter::TRACE)
        );
        // An unparsable RUST_LOG falls back rather than silencing everything.
        assert_eq!(
            log_filter(true, Some("=[")).max_level_hint(),
            Some(LevelFilter::DEBUG)
        );
    }
}
