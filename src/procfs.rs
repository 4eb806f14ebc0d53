//! What /proc says about a process (RSS, CPU time) and raising our own
//! open-file limit.

use std::io;

/// VmRSS of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/PID/status"))
}

/// VmHWM of `pid` in bytes: the peak RSS of the process so far.
pub fn hwm_bytes(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_kib(&s, "VmHWM:")
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmHWM in /proc/PID/status"))
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RssAnon, RssFile and Threads of `pid`, for telling heap from mapped
/// binary: "anon 12.3 MiB, file 1.9 MiB, 3 threads".
pub fn rss_detail(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<&str> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)
    };
    let kb = |name: &str| -> Option<f64> { Some(field(name)?.parse::<f64>().ok()? / 1024.0) };
    Some(format!(
        "anon {:.2} MiB, file {:.2} MiB, {} threads",
        kb("RssAnon:")?,
        kb("RssFile:")?,
        field("Threads:")?
    ))
}

fn parse_vmrss(status: &str) -> Option<u64> {
    Some(status_kib(status, "VmRSS:")? * 1024)
}

/// utime + stime of `pid` in seconds (`self` for this process).
pub fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/PID/stat"))?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces: split
    // after the last ')'. Fields from there: state(3) ... utime(14) stime(15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Seconds the threads of `pid` spent runnable but waiting for a CPU
/// (the second field of /proc/PID/task/TID/schedstat, summed): how much
/// other processes on the same core held it back.
pub fn run_queue_wait_seconds(pid: &str) -> Option<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(t) = t else { continue };
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        ns += s
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// Raises RLIMIT_NOFILE's soft limit to `want` (at most the hard limit).
/// Returns (soft now, hard) or an explanation of why not.
pub fn raise_nofile(want: u64) -> Result<(u64, u64), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok((soft, hard));
    }
    let target = want.min(hard);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: cur.maximum,
        },
    )
    .map_err(|e| format!("setrlimit(RLIMIT_NOFILE, {target}): {e}"))?;
    Ok((target, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_vmrss("Name:\tx\nVmRSS:\t    3400 kB\nVmData: 1 kB\n"),
            Some(3400 * 1024)
        );
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(stat), Some(280));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(hwm_bytes(std::process::id()).unwrap() >= rss);
        assert!(cpu_seconds("self").is_ok());
    }
}
