//! DERP map sources: a region served by a local HTTP server (derp.urls) is
//! merged with the embedded region and re-fetched; a change reaches a
//! connected client without reconnecting. A file source (derp.paths) in
//! Headscale's YAML shape is read too.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tinyscale::client::{netmap::NetMap, Node};

fn region_json(code: &str) -> String {
    format!(
        r#"{{"Regions":{{"901":{{"RegionID":901,"RegionCode":"{code}","RegionName":"Remote","Nodes":[{{"Name":"901a","RegionID":901,"HostName":"derp.remote.test","IPv4":"192.0.2.10"}}]}}}}}}"#
    )
}

/// A minimal HTTP server on loopback answering every request with `body`
/// (chunked, to exercise the de-chunking), bounded to `max` requests.
fn serve(body: Arc<Mutex<String>>, max: usize) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(max) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let b = body.lock().unwrap().clone();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                b.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    addr
}

#[test]
fn url_and_file_sources_merge_and_refresh() {
    let body = Arc::new(Mutex::new(region_json("first")));
    let addr = serve(body.clone(), 200);
    let dir = tempdir("derpmap");
    let file = dir.join("derp.yaml");
    std::fs::write(
        &file,
        "regions:\n  902:\n    regionid: 902\n    regioncode: fromfile\n    regionname: File Region\n    nodes:\n      - name: 902a\n        regionid: 902\n        hostname: derp.file.test\n",
    )
    .unwrap();
    let mut cfg = config(&dir);
    cfg.derp_urls = vec![format!("http://{addr}/derpmap/default")];
    cfg.derp_paths = vec![file];
    cfg.derp_update_frequency = Duration::from_secs(1);
    let ts = start_with(cfg, dir);
    let key = ts.key("ivy", true, false, &[]);
    block_on_timeout(30, async {
        let (_conn, mut s, mut nm) = join(&ts, &Node::new("watcher"), &key).await;
        let code = |nm: &NetMap| {
            nm.derp_map["Regions"]["901"]["RegionCode"]
                .as_str()
                .map(String::from)
        };
        until(&mut s, &mut nm, |nm| code(nm).as_deref() == Some("first")).await;
        let regions = nm.derp_map["Regions"].as_object().unwrap();
        assert!(
            regions.contains_key("999"),
            "embedded region kept: {regions:?}"
        );
        assert_eq!(nm.derp_map["Regions"]["902"]["RegionCode"], "fromfile");
        assert_eq!(
            nm.derp_map["Regions"]["902"]["Nodes"][0]["HostName"],
            "derp.file.test"
        );

        // The URL now serves a changed map: pushed to the connected client.
        *body.lock().unwrap() = region_json("second");
        until(&mut s, &mut nm, |nm| code(nm).as_deref() == Some("second")).await;
        // A broken document: the source's last good regions stay.
        *body.lock().unwrap() = "{not json".into();
        async_io::Timer::after(Duration::from_millis(2500)).await;
        let cur = tinyscale::control::derpmap::current(&ts.server);
        assert!(
            cur.get().contains("\"999\"") && cur.get().contains("second"),
            "{}",
            cur.get()
        );
    });
}
