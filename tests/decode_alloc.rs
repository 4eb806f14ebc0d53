//! Memory held while the server decodes a request body, measured by a
//! counting global allocator (this test binary's own): RegisterRequest and
//! MapRequest bodies carrying the largest Hostinfo accepted (16 KiB) built
//! to be expensive as a JSON value tree. The same bound is what
//! fuzz/fuzz_targets/control_decode.rs asserts on arbitrary bodies.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use tinyscale::tailcfg::{MapRequest, RegisterRequest, MAX_HOSTINFO};

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = NOW.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(n, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Tests in this binary measure one at a time.
static ONE: Mutex<()> = Mutex::new(());

/// Peak bytes allocated (above the start) while `f` runs.
fn peak_of(f: impl FnOnce()) -> usize {
    let _g = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let base = NOW.load(Relaxed);
    PEAK.store(base, Relaxed);
    f();
    PEAK.load(Relaxed).saturating_sub(base)
}

/// Hostinfo fields of the wrong type, each element cheap as text and dear
/// as a value tree, filling the Hostinfo bound.
fn hostinfo_bodies() -> Vec<String> {
    let fill = |unit: &str| {
        let n = (MAX_HOSTINFO - 64) / (unit.len() + 1);
        vec![unit; n].join(",")
    };
    vec![
        format!("{{\"Hostinfo\":{{\"OS\":[{}]}}}}", fill("{\"\":0}")),
        format!("{{\"Hostinfo\":{{\"Hostname\":[{}]}}}}", fill("[0]")),
        format!(
            "{{\"Hostinfo\":{{\"IPNVersion\":[{}]}}}}",
            fill("{\"a\":[]}")
        ),
    ]
}

#[test]
fn lenient_hostinfo_fields_are_not_built_as_value_trees() {
    for body in hostinfo_bodies() {
        assert!(body.len() <= MAX_HOSTINFO, "{}", body.len());
        // The fuzz target's bound: 64 x the Hostinfo, 8 x the body, 64 KiB.
        let bound = 64 * body.len().min(MAX_HOSTINFO) + 8 * body.len() + 64 * 1024;
        let mut hostname = None;
        let p = peak_of(|| {
            let r: RegisterRequest = serde_json::from_str(&body).expect("lenient decode");
            hostname = r.hostinfo.map(|h| h.hostname);
        });
        // Wrong types read as defaults, the request is kept.
        assert_eq!(hostname.as_deref(), Some(""));
        // A value tree took ~100 x here (1.6 MB for 16 KiB).
        assert!(
            p <= bound,
            "RegisterRequest of {} bytes peaked at {p} bytes (bound {bound})",
            body.len()
        );
        let p = peak_of(|| {
            let m: MapRequest = serde_json::from_str(&body).expect("lenient decode");
            assert!(m.hostinfo.is_some());
        });
        assert!(
            p <= bound,
            "MapRequest of {} bytes peaked at {p} bytes (bound {bound})",
            body.len()
        );
    }
}
