//! Configuration: YAML with Headscale's key names wherever the concept
//! exists (see `config/config.example.yaml` for every key).
//!
//! Where the file comes from, first match wins:
//! 1. `--config PATH` (an explicit path that does not exist is an error),
//! 2. env `TINYSCALE_CONFIG` (same),
//! 3. `/etc/tinyscale/config.yaml`,
//! 4. `./config.yaml`.
//!
//! With no file at all tinyscale runs on embedded defaults.
//!
//! Data directory: the `data_dir` key (tinyscale-specific; relative to the
//! config file's directory), else env `TINYSCALE_DATA_DIR`, else
//! `/var/lib/tinyscale` when running as root, else `$XDG_DATA_HOME/tinyscale`
//! or `~/.local/share/tinyscale`. Every relative path in the config file
//! (`noise.private_key_path`, `database.path`, `unix_socket`, `policy.path`)
//! resolves against the data directory.
//!
//! `server_url`, when not given, is `http://<primary IPv4>:<listen port>`,
//! the primary IPv4 being the local address the kernel would use to reach
//! the outside (a UDP socket "connected" to 192.0.2.1, nothing is sent),
//! falling back to 127.0.0.1.
//!
//! Unknown keys produce a warning on stderr, never a failure. Invalid values
//! stop start-up with an error naming the key.
//!
//! Environment overrides, as Headscale's: any key except maps and
//! `data_dir` can be set with `TINYSCALE_<KEY>` or `HEADSCALE_<KEY>`, KEY
//! being the dotted key uppercased with `.` as `_` (`HEADSCALE_SERVER_URL`,
//! `TINYSCALE_DNS_BASE_DOMAIN`). TINYSCALE_ beats HEADSCALE_, both beat the
//! file; lists are whitespace-separated; an empty variable is unset.
//!
//! YAML: a small loader for the subset configuration files use (block maps
//! and lists, flow `[..]`/`{..}`, quoted and plain scalars, `|`/`>` block
//! scalars, comments), parsed into `serde_json::Value`. Anchors, aliases,
//! tags and multiple documents are refused with a line number. Measured
//! against serde_yaml_ng (+150 KB stripped) and serde-saphyr (+650 KB).

use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Prometheus `/metrics` (Headscale's key); None = off.
    pub metrics_listen_addr: Option<SocketAddr>,
    /// Address advertised to clients for DERP/STUN (defaults to server_url's host).
    pub derp_ipv4: Option<String>,
    pub derp_ipv6: Option<String>,
    pub magic_dns: bool,
    pub base_domain: String,
    pub nameservers_global: Vec<String>,
    /// Split DNS: suffix → nameservers (`dns.nameservers.split`).
    pub nameservers_split: std::collections::BTreeMap<String, Vec<String>>,
    /// Extra DNS records (`dns.extra_records`): (name, type, value).
    pub extra_records: Vec<(String, String, String)>,
    /// A JSON file of extra records, re-read when it changes
    /// (`dns.extra_records_path`).
    pub extra_records_path: Option<PathBuf>,
    /// Offer Taildrop to nodes (`taildrop.enabled`).
    pub taildrop: bool,
    /// Serve the admin page under `/admin` (`web.enabled`).
    pub web_enabled: bool,
    pub search_domains: Vec<String>,
    pub policy_path: Option<PathBuf>,
    pub policy_mode: String,
    pub unix_socket: PathBuf,
    /// The CLI's remote server (`cli.address`, overridden by
    /// `TINYSCALE_CLI_ADDRESS` / `HEADSCALE_CLI_ADDRESS`): `host:port` or
    /// an `http(s)://` URL; the CLI then speaks the REST API there instead
    /// of using the admin socket.
    pub cli_address: Option<String>,
    /// The API key for `cli_address` (`cli.api_key`).
    pub cli_api_key: Option<String>,
    /// Bound on one CLI request (`cli.timeout`); None = 60 s.
    pub cli_timeout: Option<std::time::Duration>,
    /// Mode of the admin socket (`unix_socket_permission`, octal; default
    /// 0600, Headscale's 0770 works: group members may then connect).
    pub unix_socket_permission: u32,
    /// The embedded DERP server's own key (`derp.server.private_key_path`;
    /// None = `derp_server_private.key` next to the Noise key).
    pub derp_private_key_path: Option<PathBuf>,
    /// `derp.server.automatically_add_embedded_derp_region` (default true):
    /// false keeps the embedded region out of the DERP map clients get.
    pub derp_add_embedded_region: bool,
    /// `dns.override_local_dns` (default true): false sends the global
    /// nameservers as fallback resolvers, leaving the node's own DNS first.
    pub override_local_dns: bool,
    pub log_level: String,
    pub ephemeral_inactivity_timeout: std::time::Duration,
    pub database_path: PathBuf,
    /// Default node key lifetime (0 = never expire).
    pub node_expiry: std::time::Duration,
    /// Where relative paths point and where state lives by default.
    pub data_dir: PathBuf,
    /// TLS listener for DERP and the HTTPS control fallback (None = off).
    pub tls_listen_addr: Option<SocketAddr>,
    /// PEM certificate and key; both unset = self-signed, generated once.
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// Extra DERP map sources: files (`derp.paths`) and URLs (`derp.urls`).
    pub derp_paths: Vec<PathBuf>,
    pub derp_urls: Vec<String>,
    /// How often URL sources are fetched again.
    pub derp_update_frequency: Duration,
    /// OpenID Connect login (`oidc.*`); None when `oidc.issuer` is unset.
    pub oidc: Option<OidcConfig>,
    /// ACME certificates (Headscale's `tls_letsencrypt_*`, `acme_*`); None
    /// when `tls_letsencrypt_hostname` is unset.
    pub acme: Option<AcmeConfig>,
    /// Connections that have not identified a node yet, in total and per
    /// source (IPv4 address or IPv6 /64, `limits.unidentified_connections[_per_source]`).
    pub max_unidentified: usize,
    pub max_unidentified_per_source: usize,
}

/// How the ACME server validates that we hold the name (RFC 8555 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `HTTP-01`: a token over plain HTTP on port 80 (`tls_letsencrypt_listen`).
    Http01,
    /// `TLS-ALPN-01` (RFC 8737): a special certificate on the TLS listener.
    TlsAlpn01,
}

/// Certificates from an ACME CA (Let's Encrypt by default).
#[derive(Clone, Debug, PartialEq)]
pub struct AcmeConfig {
    /// `tls_letsencrypt_hostname`: the one DNS name certified.
    pub hostname: String,
    /// `tls_letsencrypt_challenge_type`.
    pub challenge: AcmeChallenge,
    /// `tls_letsencrypt_cache_dir` (default `<data_dir>/acme`): account key,
    /// certificate and key, each 0600.
    pub cache_dir: PathBuf,
    /// `tls_letsencrypt_listen` (default `:http`): the HTTP-01 listener.
    pub listen: SocketAddr,
    /// `acme_url`: the directory URL.
    pub url: String,
    /// `acme_email`: the account contact (may be empty).
    pub email: String,
    /// tinyscale only, `acme_ca_cert_path`: PEM roots for the ACME server's
    /// own TLS (a test CA); None = the system bundle.
    pub ca_cert_path: Option<PathBuf>,
}

/// A value that must never reach a log line or `{:?}` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// `oidc.*`, with Headscale's key names and defaults except `pkce.enabled`
/// (see [`OidcConfig::pkce`]).
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// Issuer URL; `<issuer>/.well-known/openid-configuration` is read.
    pub issuer: String,
    pub client_id: String,
    /// From `client_secret`, or the file named by `client_secret_path`.
    pub client_secret: Secret,
    /// Default `openid profile email`.
    pub scope: Vec<String>,
    /// Extra query parameters for the authorization request.
    pub extra_params: Vec<(String, String)>,
    /// Email domains allowed to log in (empty = any).
    pub allowed_domains: Vec<String>,
    /// Email addresses allowed to log in (empty = any).
    pub allowed_users: Vec<String>,
    /// Groups (`groups` claim) of which the user must be in one (empty = any).
    pub allowed_groups: Vec<String>,
    /// Node key lifetime after an OIDC login (default 180 days; 0 = none).
    pub expiry: Duration,
    /// Use the ID token's `exp` as the node's expiry instead.
    pub use_expiry_from_token: bool,
    /// Send a PKCE challenge. Default **on** (Headscale: off): every provider
    /// we know accepts it and it protects the code in transit; set
    /// `pkce.enabled: false` for a provider that refuses it.
    pub pkce: bool,
    /// `S256` (default) or `plain`.
    pub pkce_plain: bool,
    /// Refuse to start when the provider cannot be reached (default true).
    pub only_start_if_oidc_is_available: bool,
    /// Domain and user allow-lists only trust a verified email (default true,
    /// as Headscale's `email_verified_required`).
    pub email_verified_required: bool,
    /// PEM roots for the provider's TLS (tinyscale's `oidc.ca_cert_path`);
    /// None = the system bundle.
    pub ca_cert_path: Option<PathBuf>,
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
            metrics_listen_addr: Some("127.0.0.1:9090".parse().expect("literal")),
            tls_listen_addr: Some("0.0.0.0:443".parse().expect("literal")),
            tls_cert_path: None,
            tls_key_path: None,
            derp_paths: vec![],
            derp_urls: vec![],
            derp_update_frequency: Duration::from_secs(24 * 3600),
            oidc: None,
            acme: None,
            derp_ipv4: None,
            derp_ipv6: None,
            magic_dns: true,
            base_domain: "tail.internal".into(),
            nameservers_global: vec![],
            nameservers_split: Default::default(),
            extra_records: vec![],
            extra_records_path: None,
            taildrop: true,
            web_enabled: true,
            max_unidentified: 256,
            max_unidentified_per_source: 16,
            search_domains: vec![],
            policy_path: None,
            policy_mode: "file".into(),
            unix_socket: data_dir.join("tinyscale.sock"),
            cli_address: None,
            cli_api_key: None,
            cli_timeout: None,
            unix_socket_permission: 0o600,
            derp_private_key_path: None,
            derp_add_embedded_region: true,
            override_local_dns: true,
            log_level: "info".into(),
            ephemeral_inactivity_timeout: std::time::Duration::from_secs(30 * 60),
            database_path: data_dir.join("db.redb"),
            node_expiry: std::time::Duration::ZERO,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Host part of `server_url` (no port, no brackets).
    pub fn server_host(&self) -> Option<String> {
        url_host(&self.server_url)
    }
}

/// Why the configuration could not be loaded. Displays as
/// `config: <key>: <problem>` or `config: <file>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config: {}", self.0)
    }
}
impl std::error::Error for ConfigError {}

fn key_err(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

pub const ENV_CONFIG: &str = "TINYSCALE_CONFIG";
pub const ENV_DATA_DIR: &str = "TINYSCALE_DATA_DIR";
const SYSTEM_CONFIG: &str = "/etc/tinyscale/config.yaml";
const LOCAL_CONFIG: &str = "config.yaml";

/// Finds, reads and validates the configuration. Returns it and the file it
/// came from (None = embedded defaults). Warnings go to stderr.
pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let file = config_file(explicit);
    let data_dir = default_data_dir();
    // As viper: an empty variable counts as unset.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match file {
        None => {
            let (cfg, _) = from_yaml_str_env("", Path::new(""), &data_dir, &env)?;
            Ok((cfg, None))
        }
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let (cfg, warnings) =
                from_yaml_str_env(&text, &base, &data_dir, &env).map_err(|e| {
                    match e.0.strip_prefix("yaml: ") {
                        Some(rest) => ConfigError(format!("{}: {rest}", path.display())),
                        None => e,
                    }
                })?;
            for w in warnings {
                eprintln!("config: warning: {}: {w}", path.display());
            }
            Ok((cfg, Some(path)))
        }
    }
}

/// Which file to read: `--config`, `$TINYSCALE_CONFIG`, then tinyscale's
/// own places; when none of those exists, Headscale's (`$HEADSCALE_CONFIG`,
/// `/etc/headscale/config.yaml`, `~/.headscale/config.yaml`), so a
/// Headscale installation's config is picked up as it is.
fn config_file(explicit: Option<&Path>) -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env(ENV_CONFIG) {
        return Some(p);
    }
    let own = [SYSTEM_CONFIG, LOCAL_CONFIG]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    own.or_else(|| env("HEADSCALE_CONFIG")).or_else(|| {
        let home = env("HOME").map(|h| h.join(".headscale/config.yaml"));
        std::iter::once(PathBuf::from("/etc/headscale/config.yaml"))
            .chain(home)
            .find(|p| p.is_file())
    })
}

/// Parses a config document. `file_dir` anchors a relative `data_dir`;
/// `default_data_dir` is used when the document has none. Returns the
/// validated config and warnings (unknown keys).
pub fn from_yaml_str(
    text: &str,
    file_dir: &Path,
    default_data_dir: &Path,
) -> Result<(Config, Vec<String>), ConfigError> {
    from_yaml_str_env(text, file_dir, default_data_dir, &|_| None)
}

/// [`from_yaml_str`] with environment overrides looked up through `env`
/// (see [`env_overrides`]); an invalid value names its variable.
pub fn from_yaml_str_env(
    text: &str,
    file_dir: &Path,
    default_data_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let doc = yaml::parse(text).map_err(|e| ConfigError(format!("yaml: {e}")))?;
    let mut doc = match doc {
        Value::Null => Value::Object(Default::default()),
        v @ Value::Object(_) => v,
        _ => return Err(ConfigError("yaml: the document must be a mapping".into())),
    };
    let mut warnings = Vec::new();
    unknown_keys(&doc, "", &mut warnings);
    let applied = env_overrides(&mut doc, env);
    parse_doc(&doc, file_dir, default_data_dir, warnings).map_err(|e| {
        // Name the variable when the bad value came from one.
        for (key, var) in &applied {
            if let Some(rest) = e.0.strip_prefix(key.as_str()) {
                if rest.starts_with(':') || rest.starts_with('[') {
                    return ConfigError(format!("{var} ({key}){rest}"));
                }
            }
        }
        e
    })
}

/// Keys whose environment value is a whitespace-separated list (viper's
/// string-slice conversion splits the same way).
const LIST_KEYS: &[&str] = &[
    "derp.paths",
    "derp.urls",
    "dns.nameservers.global",
    "dns.search_domains",
    "oidc.scope",
    "oidc.allowed_domains",
    "oidc.allowed_users",
    "oidc.allowed_groups",
];

/// Keys no variable overrides: maps, and `data_dir`, whose variable
/// `TINYSCALE_DATA_DIR` is only the default when the file has none.
const NO_ENV_KEYS: &[&str] = &[
    "data_dir",
    "dns.nameservers.split",
    "dns.extra_records",
    "oidc.extra_params",
];

/// Environment variable names for a dotted key, strongest first:
/// `TINYSCALE_<KEY>` then Headscale's `HEADSCALE_<KEY>`, KEY uppercased
/// with `.` as `_` (Headscale's viper AutomaticEnv replacer).
pub fn env_names(key: &str) -> [String; 2] {
    let k = key.to_ascii_uppercase().replace('.', "_");
    [format!("TINYSCALE_{k}"), format!("HEADSCALE_{k}")]
}

/// Writes every set variable over the document; both prefixes beat the
/// file. Returns (key, variable) for each value applied. A value is typed
/// as YAML would: `true`/`false`, an integer without a leading zero (so an
/// octal "0770" stays a string), else a string.
fn env_overrides(doc: &mut Value, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut applied = Vec::new();
    for key in KNOWN.iter().filter(|k| !NO_ENV_KEYS.contains(k)) {
        let Some((var, val)) = env_names(key)
            .into_iter()
            .find_map(|n| env(&n).map(|v| (n, v)))
        else {
            continue;
        };
        let v = if LIST_KEYS.contains(key) {
            Value::Array(
                val.split_whitespace()
                    .map(|s| Value::String(s.into()))
                    .collect(),
            )
        } else {
            match val.as_str() {
                "true" | "True" | "TRUE" => Value::Bool(true),
                "false" | "False" | "FALSE" => Value::Bool(false),
                s if s == "0" || (!s.starts_with('0') && s.parse::<u64>().is_ok()) => {
                    Value::Number(s.parse::<u64>().unwrap_or_default().into())
                }
                _ => Value::String(val),
            }
        };
        set(doc, key, v);
        applied.push((key.to_string(), var));
    }
    applied
}

/// Sets a dotted key, creating (or replacing non-map) parents.
fn set(doc: &mut Value, key: &str, v: Value) {
    let mut cur = doc;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let Value::Object(m) = cur else { return };
        if parts.peek().is_none() {
            m.insert(part.to_string(), v);
            return;
        }
        cur = m.entry(part.to_string()).or_insert(Value::Null);
    }
}

fn parse_doc(
    doc: &Value,
    file_dir: &Path,
    default_data_dir: &Path,
    mut warnings: Vec<String>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let data_dir = match get_str(doc, "data_dir")? {
        Some(d) => file_dir.join(d),
        None => default_data_dir.to_path_buf(),
    };
    let mut c = Config::defaults(&data_dir);
    // An empty string means unset, as in Headscale's example config.
    let path = |k: &str| -> Result<Option<PathBuf>, ConfigError> {
        Ok(get_str(doc, k)?
            .filter(|s| !s.is_empty())
            .map(|s| data_dir.join(s)))
    };

    if let Some(s) = get_str(doc, "listen_addr")? {
        c.listen_addr = parse_socket(&s).map_err(|m| key_err("listen_addr", m))?;
    }
    c.server_url = match get_str(doc, "server_url")? {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => derived_server_url(c.listen_addr),
    };
    if let Some(p) = path("noise.private_key_path")? {
        c.noise_private_key_path = p;
    }
    if let Some(s) = get_str(doc, "prefixes.v4")? {
        c.prefix_v4 = s
            .parse()
            .map_err(|_| key_err("prefixes.v4", format!("invalid IPv4 prefix {s:?}")))?;
    }
    if let Some(s) = get_str(doc, "prefixes.v6")? {
        c.prefix_v6 = s
            .parse()
            .map_err(|_| key_err("prefixes.v6", format!("invalid IPv6 prefix {s:?}")))?;
    }
    match get_str(doc, "prefixes.allocation")?.as_deref() {
        None | Some("sequential") => {}
        Some("random") => warnings.push(
            "prefixes.allocation: \"random\" is not supported, allocating sequentially".into(),
        ),
        Some(other) => {
            return Err(key_err(
                "prefixes.allocation",
                format!("expected \"sequential\" or \"random\", got {other:?}"),
            ))
        }
    }
    if let Some(b) = get_bool(doc, "derp.server.enabled")? {
        c.derp_server_enabled = b;
    }
    if let Some(v) = get(doc, "derp.server.region_id") {
        c.derp_region_id = v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                key_err(
                    "derp.server.region_id",
                    format!("expected a positive integer, got {v}"),
                )
            })?;
    }
    if let Some(s) = get_str(doc, "derp.server.region_code")? {
        c.derp_region_code = s;
    }
    if let Some(s) = get_str(doc, "derp.server.region_name")? {
        c.derp_region_name = s;
    }
    if let Some(v) = get(doc, "derp.server.stun_listen_addr") {
        c.stun_listen_addr = match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => {
                Some(parse_socket(s).map_err(|m| key_err("derp.server.stun_listen_addr", m))?)
            }
            other => {
                return Err(key_err(
                    "derp.server.stun_listen_addr",
                    format!("expected an address, got {other}"),
                ))
            }
        };
    }
    if let Some(a) = optional_addr(doc, "metrics_listen_addr")? {
        c.metrics_listen_addr = a;
    }
    if let Some(v) = get(doc, "tls_listen_addr") {
        c.tls_listen_addr = match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(parse_socket(s).map_err(|m| key_err("tls_listen_addr", m))?),
            other => {
                return Err(key_err(
                    "tls_listen_addr",
                    format!("expected an address, got {other}"),
                ))
            }
        };
    }
    c.tls_cert_path = path("tls_cert_path")?;
    c.tls_key_path = path("tls_key_path")?;
    if c.tls_cert_path.is_some() != c.tls_key_path.is_some() {
        return Err(key_err(
            "tls_key_path",
            "tls_cert_path and tls_key_path must be set together".to_string(),
        ));
    }
    if let Some(l) = get_list(doc, "derp.paths")? {
        c.derp_paths = l.iter().map(|p| data_dir.join(p)).collect();
    }
    if let Some(l) = get_list(doc, "derp.urls")? {
        for (i, u) in l.iter().enumerate() {
            if !u.starts_with("http://") && !u.starts_with("https://") {
                return Err(key_err(
                    &format!("derp.urls[{i}]"),
                    format!("not an http(s) URL: {u:?}"),
                ));
            }
        }
        c.derp_urls = l;
    }
    if let Some(s) = get_str(doc, "derp.update_frequency")? {
        c.derp_update_frequency =
            parse_duration(&s).map_err(|m| key_err("derp.update_frequency", m))?;
    }
    if let Some(s) = get_str(doc, "derp.server.ipv4")?.filter(|s| !s.is_empty()) {
        s.parse::<Ipv4Addr>()
            .map_err(|_| key_err("derp.server.ipv4", format!("invalid IPv4 address {s:?}")))?;
        c.derp_ipv4 = Some(s);
    }
    if let Some(s) = get_str(doc, "derp.server.ipv6")?.filter(|s| !s.is_empty()) {
        s.parse::<std::net::Ipv6Addr>()
            .map_err(|_| key_err("derp.server.ipv6", format!("invalid IPv6 address {s:?}")))?;
        c.derp_ipv6 = Some(s);
    }
    if let Some(b) = get_bool(doc, "dns.magic_dns")? {
        c.magic_dns = b;
    }
    if let Some(s) = get_str(doc, "dns.base_domain")? {
        c.base_domain = s.trim_end_matches('.').to_ascii_lowercase();
    }
    if let Some(l) = get_list(doc, "dns.nameservers.global")? {
        for (i, ns) in l.iter().enumerate() {
            if ns.parse::<IpAddr>().is_err() && !ns.starts_with("https://") {
                return Err(key_err(
                    &format!("dns.nameservers.global[{i}]"),
                    format!("expected an IP address or DoH URL, got {ns:?}"),
                ));
            }
        }
        c.nameservers_global = l;
    }
    if let Some(l) = get_list(doc, "dns.search_domains")? {
        c.search_domains = l;
    }
    if let Some(v) = get(doc, "dns.nameservers.split") {
        let Value::Object(m) = v else {
            return Err(key_err(
                "dns.nameservers.split",
                format!("expected a map of domain to nameservers, got {v}"),
            ));
        };
        for (dom, list) in m {
            let key = format!("dns.nameservers.split.{dom}");
            let Value::Array(a) = list else {
                return Err(key_err(
                    &key,
                    format!("expected a list of nameservers, got {list}"),
                ));
            };
            let mut out = Vec::new();
            for ns in a {
                let ns = ns.as_str().unwrap_or_default();
                if ns.parse::<IpAddr>().is_err() && !ns.starts_with("https://") {
                    return Err(key_err(
                        &key,
                        format!("expected an IP address or DoH URL, got {ns:?}"),
                    ));
                }
                out.push(ns.to_string());
            }
            c.nameservers_split
                .insert(dom.trim_end_matches('.').to_ascii_lowercase(), out);
        }
    }
    if let Some(v) = get(doc, "dns.extra_records") {
        c.extra_records = parse_extra_records(v).map_err(|m| key_err("dns.extra_records", m))?;
    }
    c.extra_records_path = get_str(doc, "dns.extra_records_path")?
        .filter(|s| !s.is_empty())
        .map(|s| data_dir.join(s));
    if let Some(b) = get_bool(doc, "taildrop.enabled")? {
        c.taildrop = b;
    }
    if let Some(b) = get_bool(doc, "web.enabled")? {
        c.web_enabled = b;
    }
    c.policy_path = path("policy.path")?;
    if let Some(s) = get_str(doc, "policy.mode")? {
        c.policy_mode = s;
    }
    if let Some(p) = path("unix_socket")? {
        c.unix_socket = p;
    }
    c.cli_address = get_str(doc, "cli.address")?.filter(|s| !s.is_empty());
    c.cli_api_key = get_str(doc, "cli.api_key")?.filter(|s| !s.is_empty());
    c.cli_timeout = get_duration(doc, "cli.timeout")?.filter(|d| !d.is_zero());
    if let Some(s) = get_str(doc, "log.level")? {
        c.log_level = s.to_ascii_lowercase();
    }
    // Headscale's old top-level name; the nested key wins when both are set.
    for key in [
        "ephemeral_node_inactivity_timeout",
        "node.ephemeral.inactivity_timeout",
    ] {
        if let Some(d) = get_duration(doc, key)? {
            c.ephemeral_inactivity_timeout = d;
        }
    }
    if let Some(s) = get_str(doc, "unix_socket_permission")?.filter(|s| !s.is_empty()) {
        c.unix_socket_permission =
            parse_socket_mode(&s).map_err(|m| key_err("unix_socket_permission", m))?;
    }
    c.derp_private_key_path = path("derp.server.private_key_path")?;
    if let Some(b) = get_bool(doc, "derp.server.automatically_add_embedded_derp_region")? {
        c.derp_add_embedded_region = b;
    }
    if let Some(b) = get_bool(doc, "dns.override_local_dns")? {
        c.override_local_dns = b;
    }
    if let Some(d) = get_duration(doc, "node.expiry")? {
        c.node_expiry = d;
    }
    if let Some(p) = path("database.path")? {
        c.database_path = p;
    }
    for (key, field) in [
        (
            "limits.unidentified_connections",
            &mut c.max_unidentified as &mut usize,
        ),
        (
            "limits.unidentified_connections_per_source",
            &mut c.max_unidentified_per_source,
        ),
    ] {
        if let Some(v) = get(doc, key) {
            *field = v
                .as_u64()
                .filter(|n| *n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| key_err(key, format!("expected a positive integer, got {v}")))?;
        }
    }
    c.oidc = parse_oidc(doc, &data_dir)?;
    c.acme = parse_acme(doc, &data_dir)?;
    if c.acme.is_some() && c.tls_cert_path.is_some() {
        return Err(key_err(
            "tls_letsencrypt_hostname",
            "set either tls_letsencrypt_hostname or tls_cert_path/tls_key_path, not both"
                .to_string(),
        ));
    }
    validate(&c)?;
    Ok((c, warnings))
}

/// Headscale's ACME keys; None without `tls_letsencrypt_hostname`.
fn parse_acme(doc: &Value, data_dir: &Path) -> Result<Option<AcmeConfig>, ConfigError> {
    let Some(hostname) = get_str(doc, "tls_letsencrypt_hostname")?.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let host_ok = hostname.len() <= 253
        && hostname.contains('.')
        && hostname
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !host_ok {
        return Err(key_err(
            "tls_letsencrypt_hostname",
            format!("expected a DNS name, got {hostname:?}"),
        ));
    }
    let challenge = match get_str(doc, "tls_letsencrypt_challenge_type")?.as_deref() {
        None | Some("") | Some("HTTP-01") => AcmeChallenge::Http01,
        Some("TLS-ALPN-01") => AcmeChallenge::TlsAlpn01,
        Some(o) => {
            return Err(key_err(
                "tls_letsencrypt_challenge_type",
                format!("expected \"HTTP-01\" or \"TLS-ALPN-01\", got {o:?}"),
            ))
        }
    };
    let listen = match get_str(doc, "tls_letsencrypt_listen")?.filter(|s| !s.is_empty()) {
        None => "0.0.0.0:80".parse().expect("literal"),
        Some(s) => {
            // Go's ":http" / ":80" forms: every address.
            let s = s.replace(":http", ":80");
            let s = if s.starts_with(':') {
                format!("0.0.0.0{s}")
            } else {
                s
            };
            parse_socket(&s).map_err(|m| key_err("tls_letsencrypt_listen", m))?
        }
    };
    let opt_path = |k: &str| -> Result<Option<PathBuf>, ConfigError> {
        Ok(get_str(doc, k)?
            .filter(|s| !s.is_empty())
            .map(|s| data_dir.join(s)))
    };
    let url = get_str(doc, "acme_url")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://acme-v02.api.letsencrypt.org/directory".into());
    if !url.starts_with("https://") {
        return Err(key_err(
            "acme_url",
            format!("expected an https:// URL, got {url:?}"),
        ));
    }
    Ok(Some(AcmeConfig {
        hostname: hostname.to_ascii_lowercase(),
        challenge,
        cache_dir: opt_path("tls_letsencrypt_cache_dir")?.unwrap_or_else(|| data_dir.join("acme")),
        listen,
        url,
        email: get_str(doc, "acme_email")?.unwrap_or_default(),
        ca_cert_path: opt_path("acme_ca_cert_path")?,
    }))
}

/// The `oidc` section; None without `oidc.issuer`.
fn parse_oidc(doc: &Value, data_dir: &Path) -> Result<Option<OidcConfig>, ConfigError> {
    let Some(issuer) = get_str(doc, "oidc.issuer")?.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let issuer = issuer.trim_end_matches('/').to_string();
    if url_host(&issuer).is_none() {
        return Err(key_err(
            "oidc.issuer",
            format!("expected an http(s) URL, got {issuer:?}"),
        ));
    }
    let client_id = get_str(doc, "oidc.client_id")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| key_err("oidc.client_id", "required when oidc.issuer is set"))?;
    let secret = match get_str(doc, "oidc.client_secret_path")?.filter(|s| !s.is_empty()) {
        Some(p) => {
            let p = data_dir.join(expand_env(&p));
            let text = std::fs::read_to_string(&p)
                .map_err(|e| key_err("oidc.client_secret_path", format!("{}: {e}", p.display())))?;
            text.trim().to_string()
        }
        None => get_str(doc, "oidc.client_secret")?.unwrap_or_default(),
    };
    if secret.is_empty() {
        return Err(key_err(
            "oidc.client_secret",
            "oidc.client_secret or oidc.client_secret_path is required when oidc.issuer is set",
        ));
    }
    let mut extra_params = Vec::new();
    match get(doc, "oidc.extra_params") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(key_err(
                            &format!("oidc.extra_params.{k}"),
                            format!("expected a string, got {other}"),
                        ))
                    }
                };
                extra_params.push((k.clone(), v));
            }
        }
        Some(other) => {
            return Err(key_err(
                "oidc.extra_params",
                format!("expected a map of parameter to value, got {other}"),
            ))
        }
    }
    let expiry = match get(doc, "oidc.expiry") {
        None | Some(Value::Null) => Duration::from_secs(180 * 86400),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Duration::ZERO,
        Some(Value::String(s)) => parse_long_duration(s)
            .map_err(|e| key_err("oidc.expiry", format!("invalid duration {s:?}: {e}")))?,
        Some(other) => {
            return Err(key_err(
                "oidc.expiry",
                format!("expected a duration like \"180d\", got {other}"),
            ))
        }
    };
    let pkce_plain = match get_str(doc, "oidc.pkce.method")?.as_deref() {
        None | Some("S256") => false,
        Some("plain") => true,
        Some(other) => {
            return Err(key_err(
                "oidc.pkce.method",
                format!("expected \"S256\" or \"plain\", got {other:?}"),
            ))
        }
    };
    let scope = get_list(doc, "oidc.scope")?
        .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
    if !scope.iter().any(|s| s == "openid") {
        return Err(key_err(
            "oidc.scope",
            "must include \"openid\" (without it the provider sends no ID token)",
        ));
    }
    let lower = |v: Option<Vec<String>>| -> Vec<String> {
        v.unwrap_or_default()
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    };
    Ok(Some(OidcConfig {
        issuer,
        client_id,
        client_secret: Secret(secret),
        scope,
        extra_params,
        allowed_domains: lower(get_list(doc, "oidc.allowed_domains")?),
        allowed_users: lower(get_list(doc, "oidc.allowed_users")?),
        allowed_groups: get_list(doc, "oidc.allowed_groups")?.unwrap_or_default(),
        expiry,
        use_expiry_from_token: get_bool(doc, "oidc.use_expiry_from_token")?.unwrap_or(false),
        pkce: get_bool(doc, "oidc.pkce.enabled")?.unwrap_or(true),
        pkce_plain,
        only_start_if_oidc_is_available: get_bool(doc, "oidc.only_start_if_oidc_is_available")?
            .unwrap_or(true),
        email_verified_required: get_bool(doc, "oidc.email_verified_required")?.unwrap_or(true),
        ca_cert_path: get_str(doc, "oidc.ca_cert_path")?
            .filter(|s| !s.is_empty())
            .map(|s| data_dir.join(s)),
    }))
}

/// `${NAME}` and `$NAME` from the environment, as Headscale expands
/// `client_secret_path` (e.g. `${CREDENTIALS_DIRECTORY}/oidc`).
fn expand_env(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, next) = match after.strip_prefix('{') {
            Some(b) => match b.find('}') {
                Some(j) => (&b[..j], &b[j + 1..]),
                None => ("", after),
            },
            None => {
                let j = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..j], &after[j..])
            }
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&std::env::var(name).unwrap_or_default());
            rest = next;
        }
    }
    out.push_str(rest);
    out
}

/// Checks cross-field rules; every error names its key.
pub fn validate(c: &Config) -> Result<(), ConfigError> {
    let host = url_host(&c.server_url).ok_or_else(|| {
        key_err(
            "server_url",
            format!(
                "expected http://host[:port] or https://host[:port], got {:?}",
                c.server_url
            ),
        )
    })?;
    if !matches!(c.policy_mode.as_str(), "file" | "database") {
        return Err(key_err(
            "policy.mode",
            format!("expected \"file\" or \"database\", got {:?}", c.policy_mode),
        ));
    }
    if !matches!(
        c.log_level.as_str(),
        "off" | "error" | "warn" | "info" | "debug" | "trace"
    ) {
        return Err(key_err(
            "log.level",
            format!(
                "expected one of off, error, warn, info, debug, trace, got {:?}",
                c.log_level
            ),
        ));
    }
    if c.magic_dns && c.base_domain.is_empty() {
        return Err(key_err(
            "dns.base_domain",
            "required when dns.magic_dns is true",
        ));
    }
    if !c.base_domain.is_empty() {
        let bd = &c.base_domain;
        let valid = bd.len() <= 253
            && bd.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !valid {
            return Err(key_err("dns.base_domain", format!("invalid domain {bd:?}")));
        }
        let h = host.to_ascii_lowercase();
        if h == *bd || h.ends_with(&format!(".{bd}")) {
            return Err(key_err(
                "dns.base_domain",
                format!(
                    "{bd:?} must not be server_url's host {h:?} or a parent of it \
                     (MagicDNS would capture the control server's name)"
                ),
            ));
        }
    }
    for (k, v) in [
        ("prefixes.v4", c.prefix_v4.prefix_len() > 30),
        ("prefixes.v6", c.prefix_v6.prefix_len() > 126),
    ] {
        if v {
            return Err(key_err(k, "prefix is too small to hold any node"));
        }
    }
    if c.derp_server_enabled && c.derp_region_code.is_empty() {
        return Err(key_err("derp.server.region_code", "must not be empty"));
    }
    Ok(())
}

/// The effective configuration as YAML (`tinyscale dump-config`, Headscale's
/// `dumpConfig`): every key tinyscale reads, after defaults and environment
/// overrides, paths made absolute. Reading the output back gives the same
/// configuration, except that secrets (`oidc.client_secret`,
/// `cli.api_key`) are printed as `<redacted>`.
pub fn dump_yaml(c: &Config) -> String {
    use serde_json::json;
    let p = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    let op = |o: &Option<PathBuf>| o.as_deref().map(p).unwrap_or_else(|| json!(""));
    let addr = |a: &Option<SocketAddr>| json!(a.map(|a| a.to_string()).unwrap_or_default());
    let d = |d: Duration| json!(fmt_duration(d));
    let mut kv: Vec<(&str, Value)> = vec![
        ("server_url", json!(c.server_url)),
        ("listen_addr", json!(c.listen_addr.to_string())),
        ("data_dir", p(&c.data_dir)),
        ("noise.private_key_path", p(&c.noise_private_key_path)),
        ("prefixes.v4", json!(c.prefix_v4.to_string())),
        ("prefixes.v6", json!(c.prefix_v6.to_string())),
        ("prefixes.allocation", json!("sequential")),
        ("derp.server.enabled", json!(c.derp_server_enabled)),
        ("derp.server.region_id", json!(c.derp_region_id)),
        ("derp.server.region_code", json!(c.derp_region_code)),
        ("derp.server.region_name", json!(c.derp_region_name)),
        ("derp.server.stun_listen_addr", addr(&c.stun_listen_addr)),
        (
            "derp.server.ipv4",
            json!(c.derp_ipv4.clone().unwrap_or_default()),
        ),
        (
            "derp.server.ipv6",
            json!(c.derp_ipv6.clone().unwrap_or_default()),
        ),
        ("derp.server.private_key_path", op(&c.derp_private_key_path)),
        (
            "derp.server.automatically_add_embedded_derp_region",
            json!(c.derp_add_embedded_region),
        ),
        (
            "derp.paths",
            Value::Array(c.derp_paths.iter().map(|x| p(x)).collect()),
        ),
        ("derp.urls", json!(c.derp_urls)),
        ("derp.update_frequency", d(c.derp_update_frequency)),
        ("tls_listen_addr", addr(&c.tls_listen_addr)),
        ("metrics_listen_addr", addr(&c.metrics_listen_addr)),
        ("tls_cert_path", op(&c.tls_cert_path)),
        ("tls_key_path", op(&c.tls_key_path)),
        ("dns.magic_dns", json!(c.magic_dns)),
        ("dns.base_domain", json!(c.base_domain)),
        ("dns.override_local_dns", json!(c.override_local_dns)),
        ("dns.nameservers.global", json!(c.nameservers_global)),
        ("dns.nameservers.split", json!(c.nameservers_split)),
        ("dns.search_domains", json!(c.search_domains)),
        (
            "dns.extra_records",
            Value::Array(
                c.extra_records
                    .iter()
                    .map(|(n, t, v)| json!({"name": n, "type": t, "value": v}))
                    .collect(),
            ),
        ),
        ("dns.extra_records_path", op(&c.extra_records_path)),
        ("taildrop.enabled", json!(c.taildrop)),
        ("web.enabled", json!(c.web_enabled)),
        ("policy.path", op(&c.policy_path)),
        ("policy.mode", json!(c.policy_mode)),
        ("unix_socket", p(&c.unix_socket)),
        (
            "unix_socket_permission",
            json!(format!("{:04o}", c.unix_socket_permission)),
        ),
        (
            "cli.address",
            json!(c.cli_address.clone().unwrap_or_default()),
        ),
        ("cli.timeout", d(c.cli_timeout.unwrap_or(Duration::ZERO))),
        ("log.level", json!(c.log_level)),
        (
            "node.ephemeral.inactivity_timeout",
            d(c.ephemeral_inactivity_timeout),
        ),
        ("node.expiry", d(c.node_expiry)),
        ("database.path", p(&c.database_path)),
        ("limits.unidentified_connections", json!(c.max_unidentified)),
        (
            "limits.unidentified_connections_per_source",
            json!(c.max_unidentified_per_source),
        ),
    ];
    if c.cli_api_key.is_some() {
        kv.push(("cli.api_key", json!("<redacted>")));
    }
    if let Some(a) = &c.acme {
        kv.extend([
            ("tls_letsencrypt_hostname", json!(a.hostname)),
            (
                "tls_letsencrypt_challenge_type",
                json!(match a.challenge {
                    AcmeChallenge::Http01 => "HTTP-01",
                    AcmeChallenge::TlsAlpn01 => "TLS-ALPN-01",
                }),
            ),
            ("tls_letsencrypt_cache_dir", p(&a.cache_dir)),
            ("tls_letsencrypt_listen", json!(a.listen.to_string())),
            ("acme_url", json!(a.url)),
            ("acme_email", json!(a.email)),
            ("acme_ca_cert_path", op(&a.ca_cert_path)),
        ]);
    }
    if let Some(o) = &c.oidc {
        kv.extend([
            ("oidc.issuer", json!(o.issuer)),
            ("oidc.client_id", json!(o.client_id)),
            ("oidc.client_secret", json!("<redacted>")),
            ("oidc.scope", json!(o.scope)),
            (
                "oidc.extra_params",
                Value::Object(
                    o.extra_params
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect(),
                ),
            ),
            ("oidc.allowed_domains", json!(o.allowed_domains)),
            ("oidc.allowed_users", json!(o.allowed_users)),
            ("oidc.allowed_groups", json!(o.allowed_groups)),
            ("oidc.expiry", d(o.expiry)),
            ("oidc.use_expiry_from_token", json!(o.use_expiry_from_token)),
            ("oidc.pkce.enabled", json!(o.pkce)),
            (
                "oidc.pkce.method",
                json!(if o.pkce_plain { "plain" } else { "S256" }),
            ),
            (
                "oidc.only_start_if_oidc_is_available",
                json!(o.only_start_if_oidc_is_available),
            ),
            (
                "oidc.email_verified_required",
                json!(o.email_verified_required),
            ),
            ("oidc.ca_cert_path", op(&o.ca_cert_path)),
        ]);
    }
    let mut doc = Value::Object(Default::default());
    for (k, v) in kv {
        set(&mut doc, k, v);
    }
    let mut out = String::new();
    emit_yaml(&doc, 0, &mut out);
    out
}

/// Block maps, everything else as JSON (valid YAML flow style).
fn emit_yaml(v: &Value, indent: usize, out: &mut String) {
    let Value::Object(m) = v else { return };
    for (k, child) in m {
        let plain = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        let key = if plain {
            k.clone()
        } else {
            Value::String(k.clone()).to_string()
        };
        out.push_str(&" ".repeat(indent));
        out.push_str(&key);
        match child {
            Value::Object(cm) if !cm.is_empty() => {
                out.push_str(":\n");
                emit_yaml(child, indent + 2, out);
            }
            leaf => {
                out.push_str(": ");
                out.push_str(&leaf.to_string());
                out.push('\n');
            }
        }
    }
}

/// A duration as the config reads it back: "0", "1h30m", "500ms".
fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let mut s = String::new();
    for (n, unit) in [(secs / 3600, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")] {
        if n > 0 {
            s.push_str(&format!("{n}{unit}"));
        }
    }
    if ms > 0 {
        s.push_str(&format!("{ms}ms"));
    }
    s
}

/// Every key tinyscale reads, dotted.
pub(crate) const KNOWN: &[&str] = &[
    "server_url",
    "listen_addr",
    "data_dir",
    "noise.private_key_path",
    "prefixes.v4",
    "prefixes.v6",
    "prefixes.allocation",
    "derp.server.enabled",
    "derp.server.region_id",
    "derp.server.region_code",
    "derp.server.region_name",
    "derp.server.stun_listen_addr",
    "derp.server.ipv4",
    "derp.server.ipv6",
    "derp.paths",
    "derp.urls",
    "derp.update_frequency",
    "derp.auto_update_enabled",
    "tls_listen_addr",
    "metrics_listen_addr",
    "tls_cert_path",
    "tls_key_path",
    "tls_letsencrypt_hostname",
    "tls_letsencrypt_challenge_type",
    "tls_letsencrypt_cache_dir",
    "tls_letsencrypt_listen",
    "acme_url",
    "acme_email",
    "acme_ca_cert_path",
    "dns.magic_dns",
    "dns.base_domain",
    "dns.nameservers.global",
    "dns.search_domains",
    "dns.nameservers.split",
    "dns.extra_records",
    "dns.extra_records_path",
    "taildrop.enabled",
    "web.enabled",
    "policy.path",
    "policy.mode",
    "unix_socket",
    "cli.address",
    "cli.api_key",
    "cli.timeout",
    "unix_socket_permission",
    "log.level",
    "ephemeral_node_inactivity_timeout",
    "derp.server.private_key_path",
    "derp.server.automatically_add_embedded_derp_region",
    "dns.override_local_dns",
    "node.ephemeral.inactivity_timeout",
    "node.expiry",
    "database.path",
    "limits.unidentified_connections",
    "limits.unidentified_connections_per_source",
    "oidc.issuer",
    "oidc.client_id",
    "oidc.client_secret",
    "oidc.client_secret_path",
    "oidc.scope",
    "oidc.extra_params",
    "oidc.allowed_domains",
    "oidc.allowed_users",
    "oidc.allowed_groups",
    "oidc.expiry",
    "oidc.use_expiry_from_token",
    "oidc.pkce.enabled",
    "oidc.pkce.method",
    "oidc.only_start_if_oidc_is_available",
    "oidc.email_verified_required",
    "oidc.ca_cert_path",
];

fn unknown_keys(v: &Value, prefix: &str, out: &mut Vec<String>) {
    let Value::Object(m) = v else { return };
    for (k, child) in m {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if KNOWN.contains(&p.as_str()) {
            continue;
        }
        let dotted = format!("{p}.");
        if KNOWN.iter().any(|kn| kn.starts_with(&dotted)) {
            unknown_keys(child, &p, out);
        } else {
            out.push(format!("unknown or unsupported key {p:?} (ignored)"));
        }
    }
}

fn get<'a>(doc: &'a Value, key: &str) -> Option<&'a Value> {
    let mut v = doc;
    for part in key.split('.') {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

fn get_str(doc: &Value, key: &str) -> Result<Option<String>, ConfigError> {
    match get(doc, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(key_err(key, format!("expected a string, got {other}"))),
    }
}

fn get_bool(doc: &Value, key: &str) -> Result<Option<bool>, ConfigError> {
    match get(doc, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(key_err(key, format!("expected true or false, got {other}"))),
    }
}

fn get_list(doc: &Value, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    match get(doc, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(key_err(
                    key,
                    format!("expected a list of strings, got {other}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(key_err(key, format!("expected a list, got {other}"))),
    }
}

fn get_duration(doc: &Value, key: &str) -> Result<Option<Duration>, ConfigError> {
    match get(doc, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(Duration::ZERO)),
        Some(Value::String(s)) => parse_duration(s)
            .map(Some)
            .map_err(|e| key_err(key, format!("invalid duration {s:?}: {e}"))),
        Some(other) => Err(key_err(
            key,
            format!("expected a duration like \"30m\" or \"1h30m\", got {other}"),
        )),
    }
}

/// Go's `time.ParseDuration` for non-negative values: a sequence of decimal
/// numbers with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h` (`1h30m`,
/// `1.5h`, `10s`); a bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_units(s, false)
}

/// [`parse_duration`] plus the day, week and year units (`d`, `w`, `y` =
/// 365 d) that Headscale accepts for `oidc.expiry` (Prometheus style).
pub fn parse_long_duration(s: &str) -> Result<Duration, String> {
    parse_duration_units(s, true)
}

fn parse_duration_units(s: &str, long: bool) -> Result<Duration, String> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.starts_with('-') {
        return Err("must not be negative".into());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("missing unit (use ns, us, ms, s, m or h)")?;
        if num_end == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("bad number {:?}", &rest[..num_end]))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" if long => 86400.0,
            "w" if long => 7.0 * 86400.0,
            "y" if long => 365.0 * 86400.0,
            u => return Err(format!("unknown unit {u:?} (use ns, us, ms, s, m or h)")),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 1e15 {
        return Err("too large".into());
    }
    Ok(Duration::from_secs_f64(total))
}

/// An address key where empty or null means "off": None when the key is
/// absent, Some(None) when it is turned off.
fn optional_addr(doc: &Value, key: &str) -> Result<Option<Option<SocketAddr>>, ConfigError> {
    match get(doc, key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) if s.is_empty() => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(parse_socket(s).map_err(|m| key_err(key, m))?))),
        Some(other) => Err(key_err(key, format!("expected an address, got {other}"))),
    }
}

/// An admin socket mode: octal ("0770", "770", "0o660"); world-writable
/// modes are refused (anyone could drive the server without an API key).
fn parse_socket_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let m = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777 && !digits.is_empty())
        .ok_or_else(|| format!("expected an octal mode like \"0770\", got {s:?}"))?;
    if m & 0o002 != 0 {
        return Err(format!(
            "{s:?} lets every local user drive the server; use 0770 or tighter"
        ));
    }
    if m & 0o600 != 0o600 {
        return Err(format!("{s:?} must leave the owner read and write (0600)"));
    }
    Ok(m)
}

fn parse_socket(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid socket address {s:?}"))
}

/// Host of an http(s) URL without port or brackets; None if malformed.
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') {
        return None;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        h.parse::<std::net::Ipv6Addr>().ok()?;
        h
    } else {
        match authority.split_once(':') {
            Some((h, p)) if valid_port(p) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    ok.then(|| host.to_string())
}

fn valid_port(p: &str) -> bool {
    p.parse::<u16>().is_ok_and(|n| n > 0)
}

/// Parses extra DNS records: a list of `{name, type, value}` with type A
/// or AAAA and a matching address (Headscale's shape).
pub fn parse_extra_records(v: &Value) -> Result<Vec<(String, String, String)>, String> {
    let Value::Array(a) = v else {
        return Err(format!("expected a list of records, got {v}"));
    };
    let mut out = Vec::new();
    for (i, r) in a.iter().enumerate() {
        let f = |k: &str| {
            r.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let (name, ty, value) = (f("name"), f("type").to_ascii_uppercase(), f("value"));
        if name.is_empty() {
            return Err(format!("record {i}: missing name"));
        }
        let ok = match ty.as_str() {
            "A" => value.parse::<Ipv4Addr>().is_ok(),
            "AAAA" => value.parse::<std::net::Ipv6Addr>().is_ok(),
            _ => return Err(format!("record {i}: type must be A or AAAA, got {ty:?}")),
        };
        if !ok {
            return Err(format!("record {i}: {value:?} is not a valid {ty} address"));
        }
        out.push((name.trim_end_matches('.').to_string(), ty, value));
    }
    Ok(out)
}

/// `http://<primary IPv4>:<port of listen_addr>`.
pub fn derived_server_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if !a.is_unspecified() => a,
        _ => primary_ipv4(),
    };
    format!("http://{ip}:{}", listen.port())
}

/// The local address of a UDP socket connected towards TEST-NET-1
/// (nothing is sent), or 127.0.0.1.
pub fn primary_ipv4() -> Ipv4Addr {
    let found = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        });
    found.unwrap_or(Ipv4Addr::LOCALHOST)
}

/// `$TINYSCALE_DATA_DIR`, `/var/lib/tinyscale` for root, else
/// `$XDG_DATA_HOME/tinyscale` or `~/.local/share/tinyscale`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_DATA_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/var/lib/tinyscale");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(x).join("tinyscale");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/tinyscale"),
        None => PathBuf::from("/var/lib/tinyscale"),
    }
}

fn is_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective uid.
        if let Ok(m) = std::fs::metadata("/proc/self") {
            return m.uid() == 0;
        }
    }
    false
}

/// A loader for the YAML subset configuration files use.
pub mod yaml {
    use serde_json::{Map, Number, Value};

    struct Line<'a> {
        no: usize,
        indent: usize,
        /// Content without indentation and comment; empty for blank lines.
        text: String,
        raw: &'a str,
    }

    /// Deepest nesting accepted (block and flow levels each): deeper
    /// input is refused instead of exhausting the stack.
    const MAX_DEPTH: usize = 64;

    struct Parser<'a> {
        depth: usize,
        lines: Vec<Line<'a>>,
        pos: usize,
    }

    /// Parses a document into JSON values; errors carry `line N:`.
    pub fn parse(src: &str) -> Result<Value, String> {
        let mut lines = Vec::new();
        for (i, raw) in src.lines().enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let body = raw.trim_start_matches(' ');
            let indent = raw.len() - body.len();
            if body.starts_with('\t') {
                return Err(format!(
                    "line {}: tabs are not allowed for indentation",
                    i + 1
                ));
            }
            let text = strip_comment(body).trim_end().to_string();
            lines.push(Line {
                no: i + 1,
                indent,
                text,
                raw,
            });
        }
        let mut p = Parser {
            depth: 0,
            lines,
            pos: 0,
        };
        p.skip_blank();
        if p.peek().is_some_and(|l| l.indent == 0 && l.text == "---") {
            p.pos += 1;
            p.skip_blank();
        }
        let v = match p.peek() {
            None => Value::Null,
            Some(l) => {
                let ind = l.indent;
                p.block(ind)?
            }
        };
        p.skip_blank();
        if let Some(l) = p.peek() {
            if l.text == "..." {
                p.pos += 1;
                p.skip_blank();
            }
        }
        if let Some(l) = p.peek() {
            return Err(format!(
                "line {}: unexpected content {:?} (multiple documents or bad indentation)",
                l.no, l.text
            ));
        }
        Ok(v)
    }

    fn strip_comment(s: &str) -> &str {
        let (mut sq, mut dq, mut prev_space) = (false, false, true);
        let mut esc = false;
        for (i, c) in s.char_indices() {
            match c {
                '\\' if dq => {
                    esc = !esc;
                    prev_space = false;
                    continue;
                }
                '"' if !sq && !esc => dq = !dq,
                '\'' if !dq => sq = !sq,
                '#' if !sq && !dq && prev_space => return &s[..i],
                _ => {}
            }
            esc = false;
            prev_space = c == ' ' || c == '\t';
        }
        s
    }

    fn is_seq_item(t: &str) -> bool {
        t == "-" || t.starts_with("- ")
    }

    impl<'a> Parser<'a> {
        fn peek(&self) -> Option<&Line<'a>> {
            self.lines.get(self.pos)
        }

        fn skip_blank(&mut self) {
            while self.peek().is_some_and(|l| l.text.is_empty()) {
                self.pos += 1;
            }
        }

        fn block(&mut self, indent: usize) -> Result<Value, String> {
            let l = self.peek().expect("caller checked");
            if self.depth >= MAX_DEPTH {
                return Err(format!(
                    "line {}: nested more than {MAX_DEPTH} levels",
                    l.no
                ));
            }
            let seq = is_seq_item(&l.text);
            self.depth += 1;
            let r = if seq {
                self.seq(indent)
            } else {
                self.map(indent)
            };
            self.depth -= 1;
            r
        }

        fn map(&mut self, indent: usize) -> Result<Value, String> {
            let mut m = Map::new();
            loop {
                self.skip_blank();
                let Some(l) = self.peek() else { break };
                if l.indent < indent {
                    break;
                }
                let no = l.no;
                if l.indent > indent {
                    return Err(format!("line {no}: unexpected indentation"));
                }
                if is_seq_item(&l.text) {
                    // A list at the parent key's indentation ends this map.
                    break;
                }
                let (k, rest) = split_key(&l.text).ok_or_else(|| {
                    format!("line {no}: expected \"key: value\", got {:?}", l.text)
                })?;
                self.pos += 1;
                let v = self.value_after_key(indent, rest, no)?;
                if m.insert(k.clone(), v).is_some() {
                    return Err(format!("line {no}: duplicate key {k:?}"));
                }
            }
            Ok(Value::Object(m))
        }

        /// The value of `key:` whose inline remainder is `rest`.
        fn value_after_key(
            &mut self,
            indent: usize,
            rest: String,
            no: usize,
        ) -> Result<Value, String> {
            if rest.starts_with('|') || rest.starts_with('>') {
                return self.block_scalar(indent, &rest, no);
            }
            if !rest.is_empty() {
                return inline(&rest, no);
            }
            self.skip_blank();
            match self.peek() {
                Some(n) if n.indent > indent => {
                    let ni = n.indent;
                    self.block(ni)
                }
                Some(n) if n.indent == indent && is_seq_item(&n.text) => self.seq(indent),
                _ => Ok(Value::Null),
            }
        }

        fn seq(&mut self, indent: usize) -> Result<Value, String> {
            let mut out = Vec::new();
            loop {
                self.skip_blank();
                let Some(l) = self.peek() else { break };
                if l.indent != indent || !is_seq_item(&l.text) {
                    if l.indent > indent {
                        return Err(format!("line {}: unexpected indentation", l.no));
                    }
                    break;
                }
                let no = l.no;
                let after = l.text[1..].trim_start_matches(' ').to_string();
                let content_indent = indent + (l.text.len() - after.len());
                if after.is_empty() {
                    self.pos += 1;
                    self.skip_blank();
                    match self.peek() {
                        Some(n) if n.indent > indent => {
                            let ni = n.indent;
                            out.push(self.block(ni)?);
                        }
                        _ => out.push(Value::Null),
                    }
                } else if is_seq_item(&after) || split_key(&after).is_some() {
                    // "- key: v" or "- - x": re-read this line as a block
                    // starting at the item's content column.
                    let l = &mut self.lines[self.pos];
                    l.indent = content_indent;
                    l.text = after;
                    out.push(self.block(content_indent)?);
                } else {
                    self.pos += 1;
                    out.push(inline(&after, no)?);
                }
            }
            Ok(Value::Array(out))
        }

        fn block_scalar(&mut self, indent: usize, head: &str, no: usize) -> Result<Value, String> {
            let folded = head.starts_with('>');
            let chomp = &head[1..];
            if !matches!(chomp, "" | "-" | "+") {
                return Err(format!(
                    "line {no}: unsupported block scalar header {head:?}"
                ));
            }
            let mut body: Vec<&str> = Vec::new();
            let mut block_indent = None;
            while let Some(l) = self.peek() {
                if l.raw.trim().is_empty() {
                    body.push("");
                    self.pos += 1;
                    continue;
                }
                let ind = l.raw.len() - l.raw.trim_start_matches(' ').len();
                if ind <= indent {
                    break;
                }
                let bi = *block_indent.get_or_insert(ind);
                if ind < bi {
                    break;
                }
                body.push(&l.raw[bi..]);
                self.pos += 1;
            }
            // Trailing blank lines belong to the next construct unless kept.
            let mut trailing = 0;
            while body.last() == Some(&"") {
                body.pop();
                trailing += 1;
            }
            let mut s = if folded {
                let mut s = String::new();
                for (i, line) in body.iter().enumerate() {
                    if i > 0 {
                        s.push(if line.is_empty() || body[i - 1].is_empty() {
                            '\n'
                        } else {
                            ' '
                        });
                    }
                    s.push_str(line);
                }
                s
            } else {
                body.join("\n")
            };
            match chomp {
                "-" => {}
                "+" => {
                    s.push('\n');
                    s.push_str(&"\n".repeat(trailing));
                }
                _ => {
                    if !body.is_empty() {
                        s.push('\n');
                    }
                }
            }
            Ok(Value::String(s))
        }
    }

    /// Splits `key: rest` / `key:`; the key may be quoted.
    fn split_key(t: &str) -> Option<(String, String)> {
        let (key, after) = if t.starts_with('"') || t.starts_with('\'') {
            let (k, n) = quoted(t).ok()?;
            (k, &t[n..])
        } else {
            if matches!(
                t.chars().next(),
                Some('[' | '{' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`')
            ) {
                return None;
            }
            let i = t
                .find(": ")
                .or_else(|| t.strip_suffix(':').map(|s| s.len()))?;
            (t[..i].trim_end().to_string(), &t[i..])
        };
        let rest = after.strip_prefix(':')?;
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        Some((key, rest.trim().to_string()))
    }

    /// Parses a quoted scalar at the start of `s`; returns it and the bytes used.
    fn quoted(s: &str) -> Result<(String, usize), String> {
        let q = s.chars().next().ok_or("empty")?;
        let mut out = String::new();
        let mut it = s.char_indices().skip(1).peekable();
        while let Some((i, c)) = it.next() {
            if q == '\'' && c == '\'' {
                if it.peek().map(|x| x.1) == Some('\'') {
                    it.next();
                    out.push('\'');
                    continue;
                }
                return Ok((out, i + 1));
            }
            if q == '"' && c == '"' {
                return Ok((out, i + 1));
            }
            if q == '"' && c == '\\' {
                let (_, e) = it.next().ok_or("unterminated escape")?;
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    '\\' => '\\',
                    '"' => '"',
                    '/' => '/',
                    ' ' => ' ',
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| it.next().map(|x| x.1)).collect();
                        u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or("bad \\u escape")?
                    }
                    other => return Err(format!("unsupported escape \\{other}")),
                });
                continue;
            }
            out.push(c);
        }
        Err("unterminated quoted string".into())
    }

    /// A value written on the same line as its key or dash.
    fn inline(s: &str, no: usize) -> Result<Value, String> {
        let s = s.trim();
        let mut f = Flow {
            s,
            i: 0,
            no,
            depth: 0,
        };
        let v = f.value(false)?;
        f.ws();
        if f.i != s.len() {
            return Err(format!("line {no}: unexpected {:?} after value", &s[f.i..]));
        }
        Ok(v)
    }

    struct Flow<'s> {
        s: &'s str,
        i: usize,
        no: usize,
        depth: usize,
    }

    impl<'s> Flow<'s> {
        fn ws(&mut self) {
            while self.s[self.i..].starts_with(' ') {
                self.i += 1;
            }
        }
        fn err(&self, m: &str) -> String {
            format!("line {}: {m}", self.no)
        }
        fn value(&mut self, in_flow: bool) -> Result<Value, String> {
            self.ws();
            let r = &self.s[self.i..];
            if r.starts_with(['[', '{']) {
                if self.depth >= MAX_DEPTH {
                    return Err(self.err(&format!("nested more than {MAX_DEPTH} levels")));
                }
                self.depth += 1;
                let v = self.collection();
                self.depth -= 1;
                return v;
            }
            self.scalar_value(r, in_flow)
        }

        /// A flow list or mapping starting at `self.i`.
        fn collection(&mut self) -> Result<Value, String> {
            let r = &self.s[self.i..];
            match r.chars().next() {
                Some('[') => {
                    self.i += 1;
                    let mut out = Vec::new();
                    loop {
                        self.ws();
                        if self.s[self.i..].starts_with(']') {
                            self.i += 1;
                            return Ok(Value::Array(out));
                        }
                        out.push(self.value(true)?);
                        self.ws();
                        match self.s[self.i..].chars().next() {
                            Some(',') => self.i += 1,
                            Some(']') => {}
                            _ => return Err(self.err("expected ',' or ']' in flow list")),
                        }
                    }
                }
                Some('{') => {
                    self.i += 1;
                    let mut m = Map::new();
                    loop {
                        self.ws();
                        if self.s[self.i..].starts_with('}') {
                            self.i += 1;
                            return Ok(Value::Object(m));
                        }
                        let k = match self.value(true)? {
                            Value::String(k) => k,
                            other => other.to_string(),
                        };
                        self.ws();
                        if !self.s[self.i..].starts_with(':') {
                            return Err(self.err("expected ':' in flow mapping"));
                        }
                        self.i += 1;
                        let v = self.value(true)?;
                        m.insert(k, v);
                        self.ws();
                        match self.s[self.i..].chars().next() {
                            Some(',') => self.i += 1,
                            Some('}') => {}
                            _ => return Err(self.err("expected ',' or '}' in flow mapping")),
                        }
                    }
                }
                _ => unreachable!("caller checked for [ or {{"),
            }
        }

        /// A scalar (quoted or plain) starting at `r` (= `self.s[self.i..]`).
        fn scalar_value(&mut self, r: &'s str, in_flow: bool) -> Result<Value, String> {
            match r.chars().next() {
                None => Ok(Value::Null),
                Some('"' | '\'') => {
                    let (v, n) = quoted(r).map_err(|e| self.err(&e))?;
                    self.i += n;
                    Ok(Value::String(v))
                }
                Some('&' | '*' | '!' | '%' | '@' | '`') => {
                    Err(self.err("anchors, aliases, tags and directives are not supported"))
                }
                Some(_) => {
                    let end = if in_flow {
                        // A ':' only ends a flow key when followed by a space.
                        let mut e = r.len();
                        for (j, c) in r.char_indices() {
                            if matches!(c, ',' | ']' | '}')
                                || (c == ':' && r[j + 1..].starts_with([' ', ',', '}', ']']))
                            {
                                e = j;
                                break;
                            }
                        }
                        e
                    } else {
                        r.len()
                    };
                    let plain = r[..end].trim_end();
                    self.i += end;
                    Ok(scalar(plain))
                }
            }
        }
    }

    /// Resolves a plain scalar: null, booleans, numbers, else a string.
    fn scalar(s: &str) -> Value {
        match s {
            "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
            "true" | "True" | "TRUE" => return Value::Bool(true),
            "false" | "False" | "FALSE" => return Value::Bool(false),
            _ => {}
        }
        let numeric = s
            .trim_start_matches(['-', '+'])
            .starts_with(|c: char| c.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
        if numeric {
            if let Ok(i) = s.parse::<i64>() {
                return Value::Number(i.into());
            }
            if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
                return Value::Number(n);
            }
        }
        Value::String(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(y: &str) -> Result<(Config, Vec<String>), ConfigError> {
        from_yaml_str(y, Path::new("/etc/ts"), Path::new("/data"))
    }

    fn cfg_env(y: &str, vars: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        from_yaml_str_env(y, Path::new("/etc/ts"), Path::new("/data"), &env)
    }

    #[test]
    fn env_overrides_any_key() {
        assert_eq!(
            env_names("dns.base_domain"),
            ["TINYSCALE_DNS_BASE_DOMAIN", "HEADSCALE_DNS_BASE_DOMAIN"]
        );
        let file = "server_url: http://file:1\nlog:\n  level: warn\ndns:\n  magic_dns: true\n";
        let (c, _) = cfg_env(
            file,
            &[
                ("HEADSCALE_SERVER_URL", "https://hs.example/"),
                ("HEADSCALE_LOG_LEVEL", "debug"),
                ("TINYSCALE_LOG_LEVEL", "trace"),
                ("HEADSCALE_DNS_MAGIC_DNS", "false"),
                ("HEADSCALE_DNS_BASE_DOMAIN", "Ts.Example"),
                ("TINYSCALE_DERP_SERVER_REGION_ID", "901"),
                ("HEADSCALE_DNS_NAMESERVERS_GLOBAL", "1.1.1.1  9.9.9.9"),
                ("HEADSCALE_NODE_EPHEMERAL_INACTIVITY_TIMEOUT", "5m"),
                ("HEADSCALE_NOISE_PRIVATE_KEY_PATH", "k/noise.key"),
            ],
        )
        .unwrap();
        assert_eq!(c.server_url, "https://hs.example");
        // TINYSCALE_ beats HEADSCALE_, both beat the file.
        assert_eq!(c.log_level, "trace");
        assert!(!c.magic_dns);
        assert_eq!(c.base_domain, "ts.example");
        assert_eq!(c.derp_region_id, 901);
        assert_eq!(c.nameservers_global, ["1.1.1.1", "9.9.9.9"]);
        assert_eq!(c.ephemeral_inactivity_timeout, Duration::from_secs(300));
        assert_eq!(c.noise_private_key_path, Path::new("/data/k/noise.key"));
        // Nothing set: the file as it is; from_yaml_str ignores the process env.
        let (c, _) = cfg_env(file, &[]).unwrap();
        assert_eq!((c.log_level.as_str(), c.magic_dns), ("warn", true));
        // A variable creates a section the file lacks.
        let (c, _) = cfg_env("", &[("HEADSCALE_PREFIXES_V4", "100.100.0.0/16")]).unwrap();
        assert_eq!(c.prefix_v4.to_string(), "100.100.0.0/16");
    }

    #[test]
    fn env_bad_value_names_the_variable() {
        let e = cfg_env("", &[("HEADSCALE_DERP_SERVER_REGION_ID", "zero")]).unwrap_err();
        assert!(
            e.0.starts_with("HEADSCALE_DERP_SERVER_REGION_ID (derp.server.region_id):"),
            "{e}"
        );
        let e = cfg_env("", &[("TINYSCALE_DNS_MAGIC_DNS", "maybe")]).unwrap_err();
        assert!(
            e.0.starts_with("TINYSCALE_DNS_MAGIC_DNS (dns.magic_dns):"),
            "{e}"
        );
        let e = cfg_env("", &[("HEADSCALE_DNS_NAMESERVERS_GLOBAL", "1.1.1.1 nope")]).unwrap_err();
        assert!(
            e.0.starts_with("HEADSCALE_DNS_NAMESERVERS_GLOBAL (dns.nameservers.global)[1]"),
            "{e}"
        );
        // A file error stays a file error.
        let e = cfg_env("listen_addr: bad", &[("HEADSCALE_LOG_LEVEL", "info")]).unwrap_err();
        assert!(e.0.starts_with("listen_addr:"), "{e}");
    }

    #[test]
    fn env_leaves_data_dir_and_maps_alone() {
        // TINYSCALE_DATA_DIR keeps its meaning: the default when the file has
        // no data_dir (handled by default_data_dir), never an override.
        let (c, _) = cfg_env("data_dir: d", &[("TINYSCALE_DATA_DIR", "/elsewhere")]).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/ts/d"));
        let (c, _) = cfg_env("", &[("HEADSCALE_DNS_NAMESERVERS_SPLIT", "x")]).unwrap();
        assert!(c.nameservers_split.is_empty());
        // An octal-looking value stays a string, "0" is a number.
        let mut doc = json!({});
        let env = |k: &str| match k {
            "TINYSCALE_UNIX_SOCKET" => Some("0770".to_string()),
            "TINYSCALE_NODE_EXPIRY" => Some("0".to_string()),
            _ => None,
        };
        let applied = env_overrides(&mut doc, &env);
        assert_eq!(doc, json!({"unix_socket": "0770", "node": {"expiry": 0}}));
        assert_eq!(applied.len(), 2);
    }

    #[test]
    fn headscale_keys_that_change_behaviour() {
        let (c, w) = cfg(concat!(
            "ephemeral_node_inactivity_timeout: 10m\n",
            "unix_socket_permission: \"0770\"\n",
            "derp:\n  server:\n    private_key_path: derp.key\n",
            "    automatically_add_embedded_derp_region: false\n",
            "dns:\n  override_local_dns: false\n",
        ))
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.ephemeral_inactivity_timeout, Duration::from_secs(600));
        assert_eq!(c.unix_socket_permission, 0o770);
        assert_eq!(
            c.derp_private_key_path.as_deref(),
            Some(Path::new("/data/derp.key"))
        );
        assert!(!c.derp_add_embedded_region);
        assert!(!c.override_local_dns);
        // Defaults: owner-only socket, embedded region offered, DNS overridden.
        let (c, _) = cfg("").unwrap();
        assert_eq!(c.unix_socket_permission, 0o600);
        assert_eq!(c.derp_private_key_path, None);
        assert!(c.derp_add_embedded_region && c.override_local_dns);
        // The nested key wins over the old top-level one.
        let (c, _) = cfg(
            "ephemeral_node_inactivity_timeout: 10m\nnode:\n  ephemeral:\n    inactivity_timeout: 2m\n",
        )
        .unwrap();
        assert_eq!(c.ephemeral_inactivity_timeout, Duration::from_secs(120));
        // Unquoted YAML 0770 reads as 770: still octal.
        let (c, _) = cfg("unix_socket_permission: 0770").unwrap();
        assert_eq!(c.unix_socket_permission, 0o770);
        let (c, _) = cfg("unix_socket_permission: \"0o660\"").unwrap();
        assert_eq!(c.unix_socket_permission, 0o660);
        for bad in [
            "\"0777\"",
            "\"0772\"",
            "\"0400\"",
            "\"089\"",
            "\"01770\"",
            "rw",
        ] {
            let e = cfg(&format!("unix_socket_permission: {bad}")).unwrap_err();
            assert!(e.0.starts_with("unix_socket_permission:"), "{bad}: {e}");
        }
        let e = cfg("unix_socket_permission: \"0777\"").unwrap_err();
        assert!(e.0.contains("every local user"), "{e}");
        let e = cfg_env("", &[("HEADSCALE_UNIX_SOCKET_PERMISSION", "0666")]).unwrap_err();
        assert!(
            e.0.starts_with("HEADSCALE_UNIX_SOCKET_PERMISSION (unix_socket_permission):"),
            "{e}"
        );
        let e = cfg("dns:\n  override_local_dns: 1").unwrap_err();
        assert!(e.0.starts_with("dns.override_local_dns:"), "{e}");
    }

    #[test]
    fn dump_reads_back_the_same() {
        let (c, _) = cfg(concat!(
            "server_url: https://hs.example\n",
            "listen_addr: 127.0.0.1:8081\n",
            "tls_listen_addr: \"\"\n",
            "derp:\n  server:\n    region_id: 901\n    stun_listen_addr: \"\"\n",
            "    automatically_add_embedded_derp_region: false\n",
            "  update_frequency: 90m\n  paths: [m.yaml]\n",
            "dns:\n  base_domain: ts.example\n  override_local_dns: false\n",
            "  nameservers:\n    global: [1.1.1.1]\n    split:\n      lab.example: [10.0.0.53]\n",
            "  extra_records:\n    - name: a.ts.example\n      type: A\n      value: 100.64.0.9\n",
            "unix_socket_permission: \"0770\"\n",
            "node:\n  expiry: 1500ms\n",
            "oidc:\n  issuer: https://id.example\n  client_id: c\n  client_secret: hunter2\n",
            "  extra_params: {domain_hint: ts.example}\n",
        ))
        .unwrap();
        let y = dump_yaml(&c);
        assert!(!y.contains("hunter2"), "{y}");
        assert!(y.contains("client_secret: \"<redacted>\""), "{y}");
        let (c2, w) = cfg(&y).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(dump_yaml(&c2), y);
        assert_eq!(c2.derp_region_id, 901);
        assert_eq!(c2.tls_listen_addr, None);
        assert_eq!(c2.stun_listen_addr, None);
        assert!(!c2.derp_add_embedded_region && !c2.override_local_dns);
        assert_eq!(c2.derp_paths, [Path::new("/data/m.yaml")]);
        assert_eq!(c2.derp_update_frequency, Duration::from_secs(5400));
        assert_eq!(c2.nameservers_split["lab.example"], ["10.0.0.53"]);
        assert_eq!(c2.extra_records, c.extra_records);
        assert_eq!(c2.unix_socket_permission, 0o770);
        assert_eq!(c2.node_expiry, Duration::from_millis(1500));
        assert_eq!(
            c2.oidc.as_ref().unwrap().extra_params,
            [("domain_hint".to_string(), "ts.example".to_string())]
        );
        // Defaults round-trip too.
        let (d, _) = cfg("").unwrap();
        let y = dump_yaml(&d);
        assert_eq!(dump_yaml(&cfg(&y).unwrap().0), y);
        assert!(y.contains("\nunix_socket_permission: \"0600\"\n"), "{y}");
    }

    #[test]
    fn yaml_subset() {
        let v = yaml::parse(
            r#"
# comment
a: 1
b: "x # not a comment"   # a comment
c:
  d: [1, "two", three]
  e:
  - x
  - k: v
    k2: 'it''s'
  f: {p: q, r: [1, 2]}
g:
- 1.5
- true
- ~
h: |
  line1
  line2
i: >-
  folded
  text
url: http://a:8080/x
empty:
"#,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "a": 1, "b": "x # not a comment",
                "c": {"d": [1, "two", "three"], "e": ["x", {"k": "v", "k2": "it's"}],
                      "f": {"p": "q", "r": [1, 2]}},
                "g": [1.5, true, null],
                "h": "line1\nline2\n", "i": "folded text",
                "url": "http://a:8080/x", "empty": null
            })
        );
        assert!(yaml::parse("a: 1\na: 2").unwrap_err().contains("line 2"));
        assert!(yaml::parse("a: &x 1")
            .unwrap_err()
            .contains("not supported"));
        assert!(yaml::parse("a:\n\tb: 1").is_err());
        assert!(yaml::parse("a: 1\n   b: 2").unwrap_err().contains("line 2"));
        assert_eq!(yaml::parse("").unwrap(), Value::Null);
        let deep = "[".repeat(100_000);
        assert!(yaml::parse(&format!("a: {deep}"))
            .unwrap_err()
            .contains("nested"));
        let dashes = "- ".repeat(100_000);
        assert!(yaml::parse(&format!("{dashes}x"))
            .unwrap_err()
            .contains("nested"));
        let mut blocks = String::new();
        for i in 0..200 {
            blocks.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert!(yaml::parse(&blocks).unwrap_err().contains("nested"));
        assert!(yaml::parse(&format!("a: {}1{}", "[".repeat(60), "]".repeat(60))).is_ok());
    }

    /// Arbitrary input never panics or hangs.
    #[test]
    fn yaml_garbage() {
        let alphabet: &[u8] = b" -:#'\"[]{},|>&*!\n\ta0.~\\";
        let mut buf = [0u8; 64];
        for _ in 0..3000 {
            getrandom::fill(&mut buf).unwrap();
            let s: String = buf
                .iter()
                .map(|b| alphabet[*b as usize % alphabet.len()] as char)
                .collect();
            let _ = yaml::parse(&s);
            let _ = parse_duration(&s);
        }
        let _ = yaml::parse("a: \"\\u12");
        let _ = yaml::parse("µ: ü\n- é");
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("30m"), Duration::from_secs(1800));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("0"), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn full_config() {
        let (c, w) = cfg(r#"
server_url: https://hs.example.com
listen_addr: 127.0.0.1:9090
noise:
  private_key_path: noise.key
prefixes:
  v4: 100.64.0.0/16
  v6: fd7a:115c:a1e0::/56
derp:
  server:
    enabled: false
    region_id: 900
    region_code: home
    region_name: Home
    stun_listen_addr: ""
    ipv4: 198.51.100.1
dns:
  magic_dns: true
  base_domain: ts.example.net
  nameservers:
    global: [1.1.1.1, "2606:4700:4700::1111"]
  search_domains: [corp.example]
policy:
  path: /etc/ts/policy.hujson
  mode: database
unix_socket: /run/ts.sock
log:
  level: debug
node:
  ephemeral:
    inactivity_timeout: 1h30m
  expiry: 0
database:
  path: state/db.redb
tls_cert_path: ""
oidc:
  issuer: https://id.example.com/
  client_id: ts
  client_secret: s3cret
  allowed_domains: [Example.COM]
  expiry: 30d
  pkce:
    method: plain
  extra_params:
    domain_hint: example.com
  strip_email_domain: true
"#)
        .unwrap();
        assert_eq!(c.server_url, "https://hs.example.com");
        assert_eq!(c.listen_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.noise_private_key_path, Path::new("/data/noise.key"));
        assert_eq!(c.prefix_v4.to_string(), "100.64.0.0/16");
        assert!(!c.derp_server_enabled);
        assert_eq!(c.derp_region_id, 900);
        assert_eq!(c.stun_listen_addr, None);
        assert_eq!(c.derp_ipv4.as_deref(), Some("198.51.100.1"));
        assert_eq!(c.nameservers_global.len(), 2);
        assert_eq!(c.search_domains, vec!["corp.example".to_string()]);
        assert_eq!(
            c.policy_path.as_deref(),
            Some(Path::new("/etc/ts/policy.hujson"))
        );
        assert_eq!(c.policy_mode, "database");
        assert_eq!(c.unix_socket, Path::new("/run/ts.sock"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.ephemeral_inactivity_timeout, Duration::from_secs(5400));
        assert_eq!(c.node_expiry, Duration::ZERO);
        assert_eq!(c.database_path, Path::new("/data/state/db.redb"));
        let o = c.oidc.as_ref().unwrap();
        assert_eq!(o.issuer, "https://id.example.com");
        assert_eq!(o.client_secret.0, "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secret in Debug output"
        );
        assert_eq!(o.scope, ["openid", "profile", "email"]);
        assert_eq!(o.allowed_domains, ["example.com"]);
        assert_eq!(o.expiry, Duration::from_secs(30 * 86400));
        assert!(o.pkce && o.pkce_plain && o.only_start_if_oidc_is_available);
        assert_eq!(
            o.extra_params,
            [("domain_hint".into(), "example.com".into())]
        );
        // Only Headscale's removed oidc.strip_email_domain warns.
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("strip_email_domain"));
    }

    #[test]
    fn defaults_and_derived_url() {
        let (c, w) = cfg("").unwrap();
        assert!(w.is_empty());
        assert_eq!(c.database_path, Path::new("/data/db.redb"));
        assert!(c.server_url.starts_with("http://") && c.server_url.ends_with(":8080"));
        let (c, _) = cfg("listen_addr: 10.1.2.3:7000\ndata_dir: d").unwrap();
        assert_eq!(c.server_url, "http://10.1.2.3:7000");
        assert_eq!(c.data_dir, Path::new("/etc/ts/d"));
        assert_eq!(c.unix_socket, Path::new("/etc/ts/d/tinyscale.sock"));
    }

    #[test]
    fn errors_name_keys() {
        let e = |y: &str| cfg(y).unwrap_err().to_string();
        assert_eq!(
            e("listen_addr: x"),
            "config: listen_addr: invalid socket address \"x\""
        );
        assert!(e("server_url: ftp://x").starts_with("config: server_url:"));
        assert!(e("prefixes:\n  v4: 1.2.3.4/40").starts_with("config: prefixes.v4:"));
        assert!(
            e("derp:\n  server:\n    region_id: -1").starts_with("config: derp.server.region_id:")
        );
        assert!(e("derp:\n  server:\n    enabled: yes please")
            .starts_with("config: derp.server.enabled:"));
        assert!(e("node:\n  expiry: 3 days").starts_with("config: node.expiry: invalid duration"));
        assert!(e("policy:\n  mode: git").starts_with("config: policy.mode:"));
        assert!(e("log:\n  level: loud").starts_with("config: log.level:"));
        assert!(e("dns:\n  nameservers:\n    global: [nope]")
            .starts_with("config: dns.nameservers.global[0]:"));
        let bd = e("server_url: https://hs.example.com\ndns:\n  base_domain: example.com");
        assert!(bd.starts_with("config: dns.base_domain:"), "{bd}");
        assert!(
            e("server_url: https://example.com\ndns:\n  base_domain: example.com")
                .starts_with("config: dns.base_domain:")
        );
        assert!(
            cfg("server_url: https://hs.example.com\ndns:\n  base_domain: ts.example.com").is_ok()
        );
        assert!(e("a: [1,").starts_with("config: yaml: line 1"));
        assert!(
            e("derp:\n  urls: https://x/derpmap").starts_with("config: derp.urls: expected a list")
        );
        assert!(e("derp:\n  urls: [ftp://x]").starts_with("config: derp.urls[0]:"));
        assert!(e("tls_cert_path: a.pem").starts_with("config: tls_key_path:"));
        assert!(e("prefixes:\n  allocation: odd").starts_with("config: prefixes.allocation:"));
        assert!(e("oidc:\n  issuer: https://x").starts_with("config: oidc.client_id:"));
        assert!(e("oidc:\n  issuer: https://x\n  client_id: a")
            .starts_with("config: oidc.client_secret:"));
        assert!(e("oidc:\n  issuer: x\n  client_id: a").starts_with("config: oidc.issuer:"));
        assert!(e(
            "oidc:\n  issuer: https://x\n  client_id: a\n  client_secret: b\n  scope: [email]"
        )
        .starts_with("config: oidc.scope:"));
        assert!(e("oidc:\n  issuer: https://x\n  client_id: a\n  client_secret: b\n  pkce:\n    method: S512")
            .starts_with("config: oidc.pkce.method:"));
        assert!(e(
            "oidc:\n  issuer: https://x\n  client_id: a\n  client_secret_path: /nonexistent/s"
        )
        .starts_with("config: oidc.client_secret_path:"));
        let (c, _) =
            cfg("oidc:\n  issuer: https://x\n  client_id: a\n  client_secret: b\n  expiry: 0")
                .unwrap();
        assert_eq!(c.oidc.unwrap().expiry, Duration::ZERO);
        assert_eq!(expand_env("${TINYSCALE_NO_SUCH_VAR}/s$"), "/s$");
        assert_eq!(
            parse_long_duration("1w2d3h").unwrap().as_secs(),
            9 * 86400 + 3 * 3600
        );
        let (_, w) = cfg("prefixes:\n  allocation: random").unwrap();
        assert!(w[0].contains("sequentially"));
    }

    #[test]
    fn example_config_parses_cleanly() {
        let (c, w) = cfg(include_str!("../config/config.example.yaml")).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.unix_socket, Path::new("/data/tinyscale.sock"));
        assert_eq!(c.ephemeral_inactivity_timeout, Duration::from_secs(1800));
        assert!(c.nameservers_global.is_empty());
    }

    #[test]
    fn acme_keys_as_headscale_names_them() {
        let (c, w) = cfg("tls_letsencrypt_hostname: Ts.Example.com\ntls_letsencrypt_challenge_type: TLS-ALPN-01\ntls_letsencrypt_listen: \":http\"\nacme_email: a@b.c\n").unwrap();
        assert!(w.is_empty(), "{w:?}");
        let a = c.acme.unwrap();
        assert_eq!(a.hostname, "ts.example.com");
        assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(a.listen, "0.0.0.0:80".parse().unwrap());
        assert!(a.url.starts_with("https://acme-v02.api.letsencrypt.org/"));
        assert!(a.cache_dir.ends_with("acme"));
        assert!(cfg("tls_letsencrypt_hostname: \"\"")
            .unwrap()
            .0
            .acme
            .is_none());
        assert!(
            cfg("tls_letsencrypt_hostname: a.b\ntls_letsencrypt_challenge_type: DNS-01").is_err()
        );
        assert!(cfg("tls_letsencrypt_hostname: nodot").is_err());
        assert!(cfg("tls_letsencrypt_hostname: a.b\nacme_url: http://x/dir").is_err());
        assert!(cfg("tls_letsencrypt_hostname: a.b\ntls_cert_path: c\ntls_key_path: k").is_err());
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("http://1.2.3.4:80").as_deref(), Some("1.2.3.4"));
        assert_eq!(url_host("https://[::1]:443/").as_deref(), Some("::1"));
        assert_eq!(url_host("https://a.b").as_deref(), Some("a.b"));
        assert_eq!(url_host("https://a.b:0"), None);
        assert_eq!(url_host("a.b"), None);
    }
}
