//! Fuzz RegisterRequest and MapRequest decoding as the server does it
//! (`serde_json::from_slice` of a request body): any bytes decode or fail,
//! never panic, and the memory held at the peak of a decode is bounded:
//! at most 64 × min(input, Hostinfo bound) (the decoded Hostinfo and its
//! leniently decoded fields) + 8 × input + 64 KiB. A counting global
//! allocator measures the peak. (Lenient fields once went through a
//! `serde_json::Value` each, ~100 × their text: this bound caught it.)
//!
//! `src/tailcfg.rs` (and the key types it decodes) are included by path, so
//! the build needs only serde, not the main crate.
#![no_main]

#[path = "../../src/keys.rs"]
#[allow(dead_code)]
mod keys;

#[path = "../../src/tailcfg.rs"]
#[allow(dead_code)]
mod tailcfg;

use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tailcfg::{MapRequest, RegisterRequest, MAX_ENDPOINTS, MAX_HOSTINFO};

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

/// Runs `f`, returning the peak of memory allocated during it.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = NOW.load(Relaxed);
    PEAK.store(base, Relaxed);
    f();
    PEAK.load(Relaxed) - base
}

fuzz_target!(|data: &[u8]| {
    let bound = 64 * data.len().min(MAX_HOSTINFO) + 8 * data.len() + 64 * 1024;
    let p = peak_of(|| {
        if let Ok(r) = serde_json::from_slice::<RegisterRequest>(data) {
            if let Some(h) = &r.hostinfo {
                assert!(serde_json::to_vec(h).unwrap().len() <= 2 * MAX_HOSTINFO);
            }
        }
    });
    assert!(
        p <= bound,
        "RegisterRequest decode peaked at {p} bytes for {} input bytes",
        data.len()
    );
    let p = peak_of(|| {
        if let Ok(m) = serde_json::from_slice::<MapRequest>(data) {
            assert!(m.endpoints.map_or(0, |e| e.len()) <= MAX_ENDPOINTS);
        }
    });
    assert!(
        p <= bound,
        "MapRequest decode peaked at {p} bytes for {} input bytes",
        data.len()
    );
});
