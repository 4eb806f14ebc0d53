//! Configuration: YAML with Headscale's key names. PLACEHOLDER loader, to be
//! replaced by the real one (search order, validation, embedded defaults).

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Config {
    /// URL clients use to reach us, e.g. `http://192.168.1.2:8080`.
    pub server_url: String,
    pub listen_addr: SocketAddr,
    pub noise_private_key_path: PathBuf,
    pub prefix_v4: ipnet::Ipv4Net,
    pub prefix_v6: ipnet::Ipv6Net,
    pub derp_server_enabled: bool,
    pub derp_region_id: u32,
    pub derp_region_code: String,
    pub derp_region_name: String,
    pub stun_listen_addr: Option<SocketAddr>,
    /// Address advertised to clients for DERP/STUN (defaults to server_url's host).
    pub derp_ipv4: Option<String>,
    pub derp_ipv6: Option<String>,
    pub magic_dns: bool,
    pub base_domain: String,
    pub nameservers_global: Vec<String>,
    pub search_domains: Vec<String>,
    pub policy_path: Option<PathBuf>,
    pub policy_mode: String,
    pub unix_socket: PathBuf,
    pub log_level: String,
    pub ephemeral_inactivity_timeout: std::time::Duration,
    pub database_path: PathBuf,
    /// Default node key lifetime (0 = never expire).
    pub node_expiry: std::time::Duration,
}

impl Config {
    /// Defaults rooted at a data directory.
    pub fn defaults(data_dir: &std::path::Path) -> Config {
        Config {
            server_url: "http://127.0.0.1:8080".into(),
            listen_addr: "0.0.0.0:8080".parse().expect("literal"),
            noise_private_key_path: data_dir.join("noise_private.key"),
            prefix_v4: "100.64.0.0/10".parse().expect("literal"),
            prefix_v6: "fd7a:115c:a1e0::/48".parse().expect("literal"),
            derp_server_enabled: true,
            derp_region_id: 999,
            derp_region_code: "tinyscale".into(),
            derp_region_name: "tinyscale embedded DERP".into(),
            stun_listen_addr: Some("0.0.0.0:3478".parse().expect("literal")),
            derp_ipv4: None,
            derp_ipv6: None,
            magic_dns: true,
            base_domain: "tail.internal".into(),
            nameservers_global: vec![],
            search_domains: vec![],
            policy_path: None,
            policy_mode: "file".into(),
            unix_socket: data_dir.join("tinyscale.sock"),
            log_level: "info".into(),
            ephemeral_inactivity_timeout: std::time::Duration::from_secs(30 * 60),
            database_path: data_dir.join("db.redb"),
            node_expiry: std::time::Duration::ZERO,
        }
    }
}
