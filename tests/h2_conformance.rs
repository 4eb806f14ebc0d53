//! Our HTTP/2 server driver (src/http/h2conn.rs, with the control
//! server's limits) against an independent peer: Python's `h2` package
//! (tests/h2_conformance.py; CI installs python3-h2). Cases: flow-control
//! windows at 0, SETTINGS mid-stream, CONTINUATION, padding, huge header
//! lists, RST on a live stream, body over budget, the stream limit, PING.
//! The Go client is covered by the real-client e2e suites.

use async_io::{Async, Timer};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tinyscale::http::h2conn::{Driver, Request};
use tinyscale::http::h2srv::SERVER_LIMITS;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

async fn handle(mut req: Request, resets: Arc<AtomicUsize>) -> std::io::Result<()> {
    let path = req.path.clone();
    let r = &mut req.resp;
    if path == "/echo" {
        r.reply(200, "application/octet-stream", &req.body).await
    } else if let Some(n) = path.strip_prefix("/big?n=") {
        let n: usize = n.parse().unwrap_or(0);
        r.start(200, "application/octet-stream", false)?;
        r.send(&pattern(n), true).await
    } else if path == "/stream" {
        r.start(200, "application/octet-stream", false)?;
        loop {
            let tick = async {
                Timer::after(Duration::from_millis(20)).await;
                false
            };
            let closed = async {
                r.closed().await;
                true
            };
            if futures_lite::future::or(closed, tick).await {
                resets.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            r.send(b"chunk..!", false).await?;
        }
    } else {
        r.reply(404, "text/plain", b"").await
    }
}

#[test]
fn python_h2_client_conformance() {
    // Debian's python3-h2 lives in /usr/bin/python3's site-packages; a `python3` earlier on PATH
    // (pyenv, a venv) does not see it, so take the first interpreter that can import the package.
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import h2, hpack, hyperframe"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python else {
        assert!(
            std::env::var("CI").is_err(),
            "python3 with the h2 package is required in CI (apt python3-h2)"
        );
        eprintln!("SKIP: python3 h2 package not installed (apt install python3-h2)");
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = Async::new(listener).unwrap();
    let resets = Arc::new(AtomicUsize::new(0));
    let r2 = resets.clone();
    let server = smol::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let resets = r2.clone();
            smol::spawn(async move {
                let _ = s.get_ref().set_nodelay(true);
                let _ = Driver::<Async<TcpStream>>::server(s, &SERVER_LIMITS)
                    .serve(|req| {
                        smol::spawn(handle(req, resets.clone())).detach();
                    })
                    .await;
            })
            .detach();
        }
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_conformance.py");
    let child = std::process::Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server runs on smol's global executor while we wait (bounded:
    // each Python case has a 20 s deadline).
    let out = smol::block_on(async {
        let pid = child.id();
        let waiter = smol::unblock(move || child.wait_with_output());
        futures_lite::future::or(waiter, async {
            Timer::after(Duration::from_secs(240)).await;
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            panic!("python conformance client hung");
        })
        .await
    })
    .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(out.status.success(), "python h2 cases failed:\n{stdout}");
    assert!(stdout.contains("all ok"));
    // The RST on a live stream reached the handler, and so did each
    // /stream of the stream-limit case when its connection closed.
    let n = resets.load(Ordering::SeqCst);
    assert!(n >= 1, "no /stream handler saw its stream end");
}
