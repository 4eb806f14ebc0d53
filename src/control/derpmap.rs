//! The DERP map sent to clients: the embedded region (unless the embedded
//! server is disabled), plus regions from files (`derp.paths`, JSON or
//! Headscale's YAML) and URLs (`derp.urls`, e.g. a derpmap JSON endpoint),
//! refreshed every `derp.update_frequency`. Later sources replace regions
//! with the same ID. A changed map is pushed to every connected client.

use crate::config::Config;
use crate::control::{Change, Server, SharedServer};
use crate::tailcfg::{DerpMap, DerpNode, DerpRegion, SharedRaw};
use log::{info, warn};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

/// Largest DERP map document accepted from a file or URL.
pub const MAX_DOC: usize = 1 << 20;

/// The embedded relay as it is actually served: the port the TLS listener
/// is bound to and the `CertName` clients must verify against (a
/// `sha256-raw:` pin for our self-signed certificate, empty for one that
/// chains to a root the client trusts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Served {
    pub port: u16,
    pub cert_name: String,
}

/// The embedded region, as clients must dial it.
pub fn embedded_region(cfg: &Config, served: &Served) -> DerpRegion {
    // With ACME the certificate is for the ACME hostname: clients verify
    // that name (no pin).
    let host = match &cfg.acme {
        Some(a) => a.hostname.clone(),
        None => crate::control::netmap::server_host(cfg),
    };
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let ipv4 = cfg.derp_ipv4.clone().unwrap_or_else(|| {
        if host.parse::<std::net::Ipv4Addr>().is_ok() {
            host.clone()
        } else {
            String::new()
        }
    });
    let node = DerpNode {
        name: format!("{}a", cfg.derp_region_id),
        region_id: cfg.derp_region_id,
        host_name: host,
        ipv4,
        ipv6: cfg.derp_ipv6.clone().unwrap_or_else(|| {
            if is_ip {
                "none".into()
            } else {
                String::new()
            }
        }),
        stun_port: cfg.stun_listen_addr.map(|a| a.port() as i32).unwrap_or(-1),
        derp_port: served.port as i32,
        cert_name: served.cert_name.clone(),
        ..Default::default()
    };
    DerpRegion {
        region_id: cfg.derp_region_id,
        region_code: cfg.derp_region_code.clone(),
        region_name: cfg.derp_region_name.clone(),
        avoid: false,
        nodes: vec![node],
    }
}

/// Canonical tailcfg spellings of DERP map keys, looked up case-insensitively
/// (Headscale's YAML files use lower-case keys).
const KEYS: &[&str] = &[
    "Regions",
    "RegionID",
    "RegionCode",
    "RegionName",
    "Avoid",
    "NoMeasureNoHome",
    "Nodes",
    "Name",
    "HostName",
    "IPv4",
    "IPv6",
    "STUNPort",
    "STUNOnly",
    "DERPPort",
    "CertName",
    "InsecureForTests",
    "CanPort80",
    "STUNTestIP",
    "omitDefaultRegions",
    "HomeParams",
    "RegionScore",
];

fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = KEYS
                    .iter()
                    .find(|c| c.eq_ignore_ascii_case(&k))
                    .map(|c| c.to_string())
                    .unwrap_or(k);
                out.insert(key, canonical(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Parses a DERP map document (JSON, or YAML with any key case).
pub fn parse_doc(text: &str) -> Result<DerpMap, String> {
    if text.len() > MAX_DOC {
        return Err("DERP map larger than 1 MiB".into());
    }
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => crate::config::yaml::parse(text)?,
    };
    let v = canonical(v);
    let mut m: DerpMap = serde_json::from_value(v).map_err(|e| format!("not a DERP map: {e}"))?;
    // Never hand clients null or inconsistent regions.
    m.regions
        .retain(|k, r| k.parse::<u32>().ok() == Some(r.region_id) && r.region_id > 0);
    for r in m.regions.values_mut() {
        for n in &mut r.nodes {
            if n.region_id == 0 {
                n.region_id = r.region_id;
            }
        }
    }
    Ok(m)
}

/// Merges the sources in order; later regions replace earlier ones. The
/// embedded region is offered only while it is `served`: clients dial DERP
/// over TLS, so a relay whose TLS listener could not bind (`:443` as a
/// non-root user) must not be in the map, or clients would pick a home
/// region that is not there.
pub fn merge(cfg: &Config, served: Option<&Served>, extra: &[DerpMap]) -> DerpMap {
    let mut regions = BTreeMap::new();
    let offer = cfg.derp_server_enabled && cfg.derp_add_embedded_region;
    if let Some(s) = served.filter(|_| offer) {
        regions.insert(cfg.derp_region_id.to_string(), embedded_region(cfg, s));
    }
    for m in extra {
        for (k, r) in &m.regions {
            regions.insert(k.clone(), r.clone());
        }
    }
    DerpMap {
        regions,
        omit_default_regions: true,
    }
}

/// Reads every configured file and URL; a source that fails now keeps its
/// last good document (a flaky URL must not drop regions clients use).
pub async fn load_sources_keeping(server: &Server) -> Vec<DerpMap> {
    let fresh = load_sources(&server.cfg).await;
    let mut last = server
        .derp_last_good
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for (src, m) in fresh {
        match m {
            Some(m) => {
                last.insert(src, m.clone());
                out.push(m);
            }
            None => out.extend(last.get(&src).cloned()),
        }
    }
    out
}

/// Reads every configured file and URL: (source, parsed map or None when
/// it failed, which is logged).
pub async fn load_sources(cfg: &Config) -> Vec<(String, Option<DerpMap>)> {
    let mut out = Vec::new();
    for p in &cfg.derp_paths {
        match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_doc(&t))
        {
            Ok(m) => out.push((p.display().to_string(), Some(m))),
            Err(e) => {
                warn!("derp.paths {}: {e}", p.display());
                out.push((p.display().to_string(), None));
            }
        }
    }
    for u in &cfg.derp_urls {
        match fetch(u)
            .await
            .and_then(|b| String::from_utf8(b).map_err(|_| io::Error::other("not UTF-8")))
        {
            Ok(t) => match parse_doc(&t) {
                Ok(m) => out.push((u.clone(), Some(m))),
                Err(e) => {
                    warn!("derp.urls {u}: {e}");
                    out.push((u.clone(), None));
                }
            },
            Err(e) => {
                warn!("derp.urls {u}: {e}");
                out.push((u.clone(), None));
            }
        }
    }
    out
}

/// Rebuilds the map; if it changed, stores it and tells every client.
pub async fn refresh(server: &Server) {
    let extra = load_sources_keeping(server).await;
    let m = merge(&server.cfg, server.derp_served().as_ref(), &extra);
    let raw = crate::control::netmap::to_raw(&m);
    let changed = {
        let mut cur = server.derp_map.lock().unwrap_or_else(|e| e.into_inner());
        let changed = cur.as_ref().map(|c| c.get() != raw.get()).unwrap_or(true);
        *cur = Some(raw);
        changed
    };
    if changed {
        info!("DERP map: {} region(s)", m.regions.len());
        server.hub.notify(Change::Everything);
    }
}

/// The current map (built from the embedded region alone until the
/// sources have been read once).
pub fn current(server: &Server) -> SharedRaw {
    if let Some(m) = server
        .derp_map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return m;
    }
    crate::control::netmap::to_raw(&merge(&server.cfg, server.derp_served().as_ref(), &[]))
}

/// Loads the sources now and then every `derp.update_frequency`.
pub fn spawn_refresher(server: SharedServer) {
    // A weak handle: the refresher must not keep a stopped server alive.
    let weak = std::sync::Arc::downgrade(&server);
    drop(server);
    smol::spawn(async move {
        loop {
            let Some(server) = weak.upgrade() else { return };
            refresh(&server).await;
            if server.cfg.derp_paths.is_empty() && server.cfg.derp_urls.is_empty() {
                return;
            }
            let every = server.cfg.derp_update_frequency.max(Duration::from_secs(1));
            drop(server);
            async_io::Timer::after(every).await;
        }
    })
    .detach();
}

/// GET over http:// or https:// (system roots), bounded in size and time.
pub async fn fetch(url: &str) -> io::Result<Vec<u8>> {
    crate::http::client::get_ok(url, MAX_DOC, Duration::from_secs(30)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headscale_yaml_and_json() {
        let yaml = "regions:\n  900:\n    regionid: 900\n    regioncode: custom\n    regionname: My Region\n    nodes:\n      - name: 900a\n        regionid: 900\n        hostname: derp.example\n        ipv4: 192.0.2.7\n        stunport: 0\n        derpport: 0\n";
        let m = parse_doc(yaml).unwrap();
        let r = &m.regions["900"];
        assert_eq!(
            (
                r.region_code.as_str(),
                r.nodes[0].host_name.as_str(),
                r.nodes[0].ipv4.as_str()
            ),
            ("custom", "derp.example", "192.0.2.7")
        );
        let json = r#"{"Regions":{"1":{"RegionID":1,"RegionCode":"nyc","RegionName":"New York","Nodes":[{"Name":"1a","RegionID":1,"HostName":"d.example"}]},"2":{"RegionID":3,"RegionCode":"bad","RegionName":"x","Nodes":[]}}}"#;
        let m = parse_doc(json).unwrap();
        assert_eq!(
            m.regions.len(),
            1,
            "a region whose key and ID disagree is dropped"
        );
        assert!(parse_doc("[1,2").is_err());
        assert!(parse_doc(&"x".repeat(MAX_DOC + 1)).is_err());
    }

    #[test]
    fn later_sources_replace_regions() {
        let d = std::env::temp_dir();
        let mut cfg = Config::defaults(&d);
        cfg.server_url = "http://198.18.0.1:8080".into();
        let served = Served {
            port: 8443,
            cert_name: "sha256-raw:ab".into(),
        };
        let extra = parse_doc(r#"{"Regions":{"999":{"RegionID":999,"RegionCode":"over","RegionName":"o","Nodes":[]},"5":{"RegionID":5,"RegionCode":"five","RegionName":"f","Nodes":[]}}}"#).unwrap();
        let m = merge(&cfg, Some(&served), &[]);
        let n = &m.regions["999"].nodes[0];
        assert_eq!(
            (n.derp_port, n.cert_name.as_str(), n.ipv4.as_str()),
            (8443, "sha256-raw:ab", "198.18.0.1")
        );
        let m = merge(&cfg, Some(&served), &[extra]);
        assert_eq!(m.regions["999"].region_code, "over");
        assert!(m.regions.contains_key("5"));
        // Not served (the TLS listener did not bind): no embedded region.
        assert!(merge(&cfg, None, &[]).regions.is_empty());
        // automatically_add_embedded_derp_region: false keeps it out even
        // when served; other sources still come through.
        cfg.derp_add_embedded_region = false;
        let five = parse_doc(
            r#"{"Regions":{"5":{"RegionID":5,"RegionCode":"five","RegionName":"f","Nodes":[]}}}"#,
        )
        .unwrap();
        let m = merge(&cfg, Some(&served), &[five]);
        assert_eq!(m.regions.keys().collect::<Vec<_>>(), ["5"]);
        cfg.derp_add_embedded_region = true;
        cfg.derp_server_enabled = false;
        assert!(merge(&cfg, Some(&served), &[]).regions.is_empty());
    }
}
