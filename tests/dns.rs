//! DNS configuration in the map: MagicDNS suffix, global and split
//! nameservers, search domains, extra records, and a hot-reloaded records
//! file (protocol-level client).

mod common;

use common::*;
use tinyscale::client::{netmap::NetMap, Node};

#[test]
fn dns_config_and_extra_records_file() {
    let dir = tempdir("dns");
    let mut cfg = config(&dir);
    cfg.nameservers_global = vec!["1.1.1.1".into()];
    cfg.search_domains = vec!["corp.example".into()];
    cfg.nameservers_split
        .insert("lab.example".into(), vec!["10.0.0.53".into()]);
    cfg.extra_records = vec![("nas.tail.test".into(), "A".into(), "100.64.9.9".into())];
    let rec = dir.join("records.json");
    std::fs::write(
        &rec,
        r#"[{"name": "grafana.tail.test", "type": "A", "value": "100.64.7.7"}]"#,
    )
    .unwrap();
    cfg.extra_records_path = Some(rec.clone());
    let ts = start_with(cfg, dir);
    let key = ts.key("hal", true, false, &[]);
    block_on_timeout(30, async {
        let (_conn, mut s, mut nm) = join(&ts, &Node::new("box"), &key).await;
        let has = |nm: &NetMap, name: &str| {
            nm.dns["ExtraRecords"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["Name"] == name))
        };
        // The file is read by a watcher shortly after start.
        until(&mut s, &mut nm, |nm| has(nm, "grafana.tail.test.")).await;
        let d = &nm.dns;
        assert_eq!(d["Proxied"], true);
        assert_eq!(d["Domains"][0], "tail.test");
        assert_eq!(d["Domains"][1], "corp.example");
        assert_eq!(d["Resolvers"][0]["Addr"], "1.1.1.1");
        assert_eq!(d["Routes"]["lab.example."][0]["Addr"], "10.0.0.53");
        assert!(has(&nm, "nas.tail.test."));
        // A/AAAA records go out untyped (tailcfg: "" = A or AAAA by value), which tsnet's
        // dialer needs to use them; quad-100 treats "", "A" and "AAAA" alike.
        for r in d["ExtraRecords"].as_array().unwrap() {
            assert!(r.get("Type").is_none(), "{r}");
        }
        assert_eq!(nm.self_node["Name"], "box.tail.test.");

        // Hot reload: a new record arrives without reconnecting.
        async_io::Timer::after(std::time::Duration::from_millis(1100)).await;
        std::fs::write(
            &rec,
            r#"[{"name": "wiki.tail.test", "type": "A", "value": "100.64.7.8"}]"#,
        )
        .unwrap();
        until(&mut s, &mut nm, |nm| has(nm, "wiki.tail.test.")).await;
        assert!(!has(&nm, "grafana.tail.test."));
        // A broken file keeps the previous records.
        std::fs::write(&rec, "not json").unwrap();
        async_io::Timer::after(std::time::Duration::from_millis(2500)).await;
        assert_eq!(ts.server.dns_extra.lock().unwrap().len(), 1);
    });
}
