//! A minimal stderr logger for the `log` facade: level from `log.level`,
//! UTC timestamps, one line per record. Secrets never reach it: keys are
//! logged in their short `[prefix…]` form only.

use log::{LevelFilter, Metadata, Record};
use std::io::Write;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // Dependencies (h2, redb) are chatty at debug; keep ours only.
        if r.level() > log::Level::Info && !r.target().starts_with("tinyscale") {
            return;
        }
        let now = crate::state::now();
        let line = format!(
            "{} {:<5} {}\n",
            crate::timefmt::rfc3339(now),
            r.level(),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Parses `trace|debug|info|warn|error|off`.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::Trace,
        "debug" => LevelFilter::Debug,
        "info" => LevelFilter::Info,
        "warn" | "warning" => LevelFilter::Warn,
        "error" => LevelFilter::Error,
        "off" | "disabled" => LevelFilter::Off,
        _ => return None,
    })
}

/// Installs the logger once; later calls only change the level.
pub fn init(level: &str) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(parse_level(level).unwrap_or(LevelFilter::Info));
}

/// Raises the soft open-files limit to the hard one. Under systemd the
/// soft limit is 1024 and Rust, unlike Go's runtime, does not raise it:
/// every connected node is a socket, so 1024 would be the tailnet's size.
/// (Linux refuses a soft limit above fs.nr_open, 1 Mi everywhere, even
/// when the hard limit is "unlimited".)
pub fn raise_nofile_limit() {
    let before = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match crate::procfs::raise_nofile(1 << 20) {
        Ok((soft, hard)) if Some(soft) != before => {
            log::info!(
                "open files: soft limit raised from {before:?} to {soft} (hard limit {hard})"
            )
        }
        Ok((soft, hard)) => log::info!("open files: soft limit {soft} (hard limit {hard})"),
        Err(e) => log::warn!("open files: soft limit {before:?} kept: {e}"),
    }
}
