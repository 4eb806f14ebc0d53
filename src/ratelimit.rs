//! Rate-limited log lines (std only: the DERP fuzz target includes this
//! file by path).

/// A log line that an attacker can trigger at will (a refused connection,
/// EMFILE on accept) is written at most once per `every`; the lines held
/// back in between are counted and reported with the next one, so the
/// log says how much happened without one line per event.
pub struct RateLimited {
    every_ms: u64,
    /// Milliseconds since the process's first rate-limited line, +1 (0 =
    /// never written).
    last_ms: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
}

impl RateLimited {
    pub const fn new(every: std::time::Duration) -> RateLimited {
        RateLimited {
            every_ms: every.as_millis() as u64,
            last_ms: std::sync::atomic::AtomicU64::new(0),
            held_back: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Some(lines held back since the last one) when a line may be
    /// written now; None (and counted) when not.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = since_start_ms() + 1;
        let last = self.last_ms.load(Relaxed);
        if last != 0 && now < last + self.every_ms
            || self
                .last_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.held_back.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Relaxed))
    }
}

fn since_start_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// " (N more like it not logged)" for a [`RateLimited`] line, or "".
pub fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it since the last such line)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rate_limited_lines_count_what_they_hold_back() {
        let r = super::RateLimited::new(std::time::Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r0 = super::RateLimited::new(std::time::Duration::ZERO);
        assert_eq!(r0.allow(), Some(0));
        assert!(super::held_back(2).contains("2 more"));
    }
}
