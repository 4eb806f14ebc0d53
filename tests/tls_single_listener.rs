//! Headscale's TLS set-up: `listen_addr` on the same socket as the TLS listener, with
//! `tls_cert_path`/`tls_key_path`, makes that one listener HTTPS (control, API, pages, DERP)
//! instead of a plain bind followed by a failing second bind of the same port.

mod common;

use common::{eventually, free_port, serve, serve_log, tempdir, Serve};
use std::path::Path;
use std::process::{Command, Output};

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl runs")
}

fn start(dir: &Path, port: u16, cert: &Path, key: &Path) -> Serve {
    serve(
        dir,
        &format!(
            "data_dir: {d}\nlisten_addr: 127.0.0.1:{port}\ntls_listen_addr: 127.0.0.1:{port}\nserver_url: https://127.0.0.1:{port}\n\
             tls_cert_path: {c}\ntls_key_path: {k}\n\
             metrics_listen_addr: \"\"\nstun_listen_addr: \"\"\nunix_socket: {d}/admin.sock\n",
            d = dir.display(),
            c = cert.display(),
            k = key.display()
        ),
    )
    .0
}

#[test]
fn listen_addr_with_a_certificate_is_one_https_listener() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "curl is required in CI");
        eprintln!("SKIP: curl not installed");
        return;
    }
    let dir = tempdir("tls1");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    tinyscale::http::tls::generate(vec!["127.0.0.1".into()], &cert, &key).unwrap();
    let port = free_port();
    let mut srv = start(&dir, port, &cert, &key);
    let base = format!("https://127.0.0.1:{port}");
    let health = format!("{base}/health");
    let ok = eventually(30, || {
        curl(&["--cacert", cert.to_str().unwrap(), &health])
            .stdout
            .starts_with(b"{\"status\":\"pass\"}")
    });
    let log = || serve_log(&dir);
    assert!(ok, "no HTTPS health answer on listen_addr; log:\n{}", log());
    // The server is alive on the one socket: the plain bind did not take the port first.
    assert!(
        srv.0.try_wait().unwrap().is_none(),
        "server exited; log:\n{}",
        log()
    );
    // The control plane's key and the REST API are served over the same HTTPS socket.
    let k = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        &format!("{base}/key?v=113"),
    ]);
    let k = String::from_utf8_lossy(&k.stdout);
    assert!(k.contains("\"publicKey\":\"mkey:"), "{k}");
    let api = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/api/v1/user"),
    ]);
    assert_eq!(String::from_utf8_lossy(&api.stdout), "401");
    // Plain HTTP on that port is not served: it is the TLS listener.
    let plain = curl(&[&format!("http://127.0.0.1:{port}/health")]);
    assert!(
        !plain.stdout.starts_with(b"{\"status\":\"pass\"}"),
        "plain HTTP answered on the HTTPS listener"
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}
