//! One tailscale-rs 0.6.1 node for tests/e2e_tailscale_rs.rs, driven over
//! stdin/stdout like tests/realclient/arkitekt_node.py:
//!     tsrs-probe KEY_FILE HOSTNAME CONTROL_URL AUTH_KEY
//! joins, serves `hello from tailscale-rs` over HTTP on tailnet port 80,
//! prints {"event":"up","ipv4":...}, then answers `get IP PORT PATH SECS`
//! (an HTTP/1.0 GET over the tailnet) with {"event":"get","status":..,
//! "bytes":..,"sha256":..,"error":..}; `quit` ends it.

use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn say(v: serde_json::Value) {
    println!("{v}");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let (key_file, host, control, auth) = (&a[1], &a[2], &a[3], &a[4]);
    let mut cfg = tailscale::Config::default_with_key_file(key_file).await?;
    cfg.control_server_url = control.parse()?;
    cfg.requested_hostname = Some(host.clone());
    cfg.client_name = Some("tinyscale-e2e".into());
    let t0 = std::time::Instant::now();
    let dev = std::sync::Arc::new(tailscale::Device::new(&cfg, Some(auth.clone())).await?);
    let ip = dev.ipv4_addr().await?;
    let listener = dev.tcp_listen(SocketAddr::from((ip, 80))).await?;
    tokio::spawn(async move {
        while let Ok(mut c) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf).await;
                let body = "hello from tailscale-rs\n";
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
                let _ = c.shutdown().await;
            });
        }
    });
    say(serde_json::json!({"event": "up", "ipv4": ip.to_string(), "join_s": t0.elapsed().as_secs_f64()}));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let p: Vec<&str> = line.split_whitespace().collect();
        match p.as_slice() {
            ["get", ip, port, path, secs] => {
                let addr: SocketAddr = format!("{ip}:{port}").parse()?;
                let secs: u64 = secs.parse()?;
                let dev = dev.clone();
                let path = path.to_string();
                let t = std::time::Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(secs), async move {
                    let mut c = dev.tcp_connect(addr).await?;
                    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
                    let mut out = Vec::new();
                    c.read_to_end(&mut out).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
                })
                .await;
                let v = match r {
                    Ok(Ok(out)) => {
                        let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(out.len());
                        let head = String::from_utf8_lossy(&out[..split]).to_string();
                        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                        let body = &out[split..];
                        let sha: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
                        serde_json::json!({"event": "get", "status": status, "bytes": body.len(), "sha256": sha,
                            "body": String::from_utf8_lossy(&body[..body.len().min(200)]), "secs": t.elapsed().as_secs_f64(), "error": ""})
                    }
                    Ok(Err(e)) => serde_json::json!({"event": "get", "status": 0, "bytes": 0, "error": e.to_string(), "secs": t.elapsed().as_secs_f64()}),
                    Err(_) => serde_json::json!({"event": "get", "status": 0, "bytes": 0, "error": "timed out", "secs": t.elapsed().as_secs_f64()}),
                };
                say(v);
            }
            ["quit"] => break,
            _ => say(serde_json::json!({"event": "error", "error": format!("unknown command {line:?}")})),
        }
    }
    std::process::exit(0);
}
