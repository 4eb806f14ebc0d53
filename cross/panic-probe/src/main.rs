//! Spawns 4 detached "connection" tasks on smol's executor threads; task 2 panics (index out of
//! bounds on input, the kind of bug a malformed packet finds). Prints `survived` and exits 0 if the
//! other three finished and the process is alive after the panic. Under panic=abort the process dies
//! with SIGABRT instead. Uses no timers: under qemu-mipsel 7.2 smol's timers never fire (qemu lacks
//! timerfd_settime64), which would hang the probe for a reason that has nothing to do with panics.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let about_to_panic = Arc::new(AtomicBool::new(false));
    let (tx, rx) = smol::channel::unbounded::<usize>();
    for i in 0..4usize {
        let tx = tx.clone();
        let flag = about_to_panic.clone();
        smol::spawn(async move {
            smol::future::yield_now().await;
            let input: Vec<u8> = vec![0u8; i];
            if i == 2 {
                flag.store(true, Ordering::SeqCst);
                // Out-of-bounds read decided at run time, as a parser bug would be.
                let n = input.len() + std::env::args().count();
                std::hint::black_box(input[n]);
            }
            let _ = tx.send(i).await;
        })
        .detach();
    }
    drop(tx);
    let mut done = 0;
    for _ in 0..3 {
        if smol::block_on(rx.recv()).is_ok() {
            done += 1;
        }
    }
    // Give the panicking task's thread time to finish its panic (message, unwind or abort).
    std::thread::sleep(Duration::from_millis(500));
    if done == 3 && about_to_panic.load(Ordering::SeqCst) {
        println!("survived: 3 of 4 tasks finished, the panicking one was contained");
    } else {
        println!("unexpected: {done} tasks finished, panic reached: {}", about_to_panic.load(Ordering::SeqCst));
        std::process::exit(1);
    }
}
