//! Spawns 4 detached "connection" tasks; task 2 panics (index out of bounds on input, the kind of
//! bug a malformed packet finds). Prints `survived` and exits 0 if the other tasks still ran and the
//! process is alive afterwards. Under panic=abort the process dies with SIGABRT instead.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn main() {
    let done = Arc::new(AtomicUsize::new(0));
    smol::block_on(async {
        for i in 0..4usize {
            let done = done.clone();
            smol::spawn(async move {
                smol::Timer::after(std::time::Duration::from_millis(10 * i as u64)).await;
                let input: Vec<u8> = vec![0u8; i];
                if i == 2 {
                    // Out-of-bounds read decided at run time, as a parser bug would be.
                    let n = input.len() + std::env::args().count();
                    std::hint::black_box(input[n]);
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
            .detach();
        }
        smol::Timer::after(std::time::Duration::from_millis(300)).await;
    });
    let n = done.load(Ordering::SeqCst);
    if n == 3 {
        println!("survived: 3 of 4 tasks finished, the panicking one was contained");
    } else {
        println!("unexpected: {n} tasks finished");
        std::process::exit(1);
    }
}
