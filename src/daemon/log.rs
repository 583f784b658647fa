//! Logging: slog to stderr, human (slog-term) or JSON lines (slog-json),
//! through slog-async so that logging never blocks the caller on the
//! terminal; and [`RateLimit`] for messages that a flood could repeat.

use slog::{o, Drain, Level, Logger};
use std::time::{Duration, Instant};

/// Keeps the async drain alive; dropping it flushes the log.
pub type Guard = slog_async::AsyncGuard;

/// A logger at `level` (critical, error, warning, info, debug, trace).
pub fn logger(level: &str, json: bool) -> Result<(Logger, Guard), String> {
    let level: Level = level.parse().map_err(|_| {
        format!(
            "unknown log level {level:?}; give one of critical, error, warning, info, debug, trace"
        )
    })?;
    let (drain, guard) = if json {
        let drain = slog_json::Json::new(std::io::stderr())
            .add_default_keys()
            .build()
            .fuse();
        slog_async::Async::new(drain)
            .chan_size(4096)
            .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
            .build_with_guard()
    } else {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        slog_async::Async::new(drain)
            .chan_size(4096)
            .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
            .build_with_guard()
    };
    let drain = drain.filter_level(level).fuse();
    Ok((Logger::root(drain, o!("prog" => "flowmark")), guard))
}

/// At most `per_second` messages a second; the rest are counted and the
/// count goes with the next message let through.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    window: Instant,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            window: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(messages suppressed since the last one)` when this one may go.
    pub fn allow(&mut self) -> Option<u64> {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.in_window = 0;
        }
        if self.in_window < self.per_second {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_drops() {
        let mut r = RateLimit::new(2);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.window -= Duration::from_secs(2);
        assert_eq!(r.allow(), Some(2));
    }

    #[test]
    fn levels() {
        assert!(logger("bogus", false).is_err());
        assert!(logger("debug", true).is_ok());
    }
}
