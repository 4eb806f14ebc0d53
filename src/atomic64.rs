//! `AtomicU64` everywhere: MIPS32 (and other 32-bit targets without 64-bit
//! atomics) gets a small lock-based stand-in with the same methods we use;
//! every other target uses the real thing.

#[cfg(target_has_atomic = "64")]
pub use std::sync::atomic::AtomicU64;

#[cfg(not(target_has_atomic = "64"))]
mod shim {
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    /// Counters and timestamps only: a mutex is plenty.
    #[derive(Debug, Default)]
    pub struct AtomicU64(Mutex<u64>);

    impl AtomicU64 {
        pub const fn new(v: u64) -> Self {
            AtomicU64(Mutex::new(v))
        }
        fn get(&self) -> std::sync::MutexGuard<'_, u64> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        pub fn load(&self, _: Ordering) -> u64 {
            *self.get()
        }
        pub fn store(&self, v: u64, _: Ordering) {
            *self.get() = v;
        }
        pub fn fetch_add(&self, v: u64, _: Ordering) -> u64 {
            let mut g = self.get();
            let old = *g;
            *g = old.wrapping_add(v);
            old
        }
    }
}

#[cfg(not(target_has_atomic = "64"))]
pub use shim::AtomicU64;
