//! Rate-limited log lines (std only: the DERP fuzz target includes this
//! file by path).

/// A log line that an attacker can trigger at will (a refused connection,
/// EMFILE on accept) is written at most once per `every`; the lines held
/// back in between are counted and reported with the next one, so the
/// log says how much happened without one line per event.
pub struct RateLimited {
    every_ms: u64,
    /// (milliseconds since the process's first rate-limited line, +1 (0 =
    /// never written); lines held back since). A mutex, not two 64-bit
    /// atomics: 32-bit MIPS has no `AtomicU64`, and this file is std only
    /// (the DERP fuzz target includes it by path); a refused event costs
    /// one uncontended lock.
    state: std::sync::Mutex<(u64, u64)>,
}

impl RateLimited {
    pub const fn new(every: std::time::Duration) -> RateLimited {
        RateLimited {
            every_ms: every.as_millis() as u64,
            state: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Some(lines held back since the last one) when a line may be
    /// written now; None (and counted) when not.
    pub fn allow(&self) -> Option<u64> {
        let now = since_start_ms() + 1;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, held) = &mut *st;
        if *last != 0 && now < *last + self.every_ms {
            *held += 1;
            return None;
        }
        *last = now;
        Some(std::mem::take(held))
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
