//! The command line: Headscale's verbs (`serve`, `users`, `preauthkeys`,
//! `nodes`, `version`). Everything except `serve` and `version` talks to the
//! running server over the admin unix socket, so changes reach connected
//! clients at once. Nothing ever prompts.
//!
//! `--config PATH` / `--config=PATH` / `-c PATH` is accepted anywhere on
//! the command line (it is taken out before argh parses); env
//! `TINYSCALE_CONFIG` works too. Listings and creations take
//! `-o json` / `-o json-line` and print Headscale's API JSON shapes.
//!
//! Headscale's command aliases work: `user`, `node`, `preauthkey`,
//! `authkey`, `pre`, `ls`, `show`, `c`, `new`, `mv`, `delete`/`del`/`rm`.

/// `print!` that exits quietly when stdout is a closed pipe (`| head`).
macro_rules! out {
    ($($a:tt)*) => { $crate::cli::output::write_stdout(&format!($($a)*)) };
}
/// `println!` that exits quietly when stdout is a closed pipe.
macro_rules! outln {
    ($($a:tt)*) => { $crate::cli::output::write_stdout(&format!("{}\n", format_args!($($a)*))) };
}

pub mod client;
pub mod goshape;
pub mod migrate;
pub mod output;

use crate::api::types::{ApiNode, ApiPreAuthKey, ApiUser};
use crate::config::{self, Config};
use argh::FromArgs;
use output::{short_time, table, Format};
use serde_json::{json, Value};
use std::path::PathBuf;

/// tinyscale: a small self-hosted Tailscale control server.
#[derive(FromArgs, Debug)]
struct Top {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
    #[argh(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Cmd {
    Serve(ServeCmd),
    ConfigTest(ConfigTestCmd),
    DumpConfig(DumpConfigCmd),
    Users(UsersCmd),
    PreAuthKeys(PreAuthKeysCmd),
    Nodes(NodesCmd),
    Auth(AuthCmd),
    ApiKeys(ApiKeysCmd),
    Health(HealthCmd),
    Generate(GenerateCmd),
    Version(VersionCmd),
    Policy(crate::policy::cli::PolicyCmd),
    Debug(crate::debug::DebugCmd),
    Web(WebCmd),
    #[cfg(feature = "migrate")]
    Migrate(migrate::MigrateCmd),
    Backup(migrate::BackupCmd),
    Restore(migrate::RestoreCmd),
}

/// Run the control server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
struct ServeCmd {}

/// Check the configuration and exit (0 = fine); prints which file was used.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "configtest")]
struct ConfigTestCmd {}

/// Print the effective configuration (file, defaults and environment) as
/// YAML; secrets are redacted. Headscale's `dumpConfig` works too.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "dump-config")]
struct DumpConfigCmd {}

/// Print the version.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
struct VersionCmd {
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

// ----- users ----------------------------------------------------------

/// Manage users.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "users")]
struct UsersCmd {
    #[argh(subcommand)]
    cmd: UsersSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum UsersSub {
    Create(UserCreate),
    List(UserList),
    Rename(UserRename),
    Destroy(UserDestroy),
}

/// Create a user.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "create")]
struct UserCreate {
    /// user name
    #[argh(positional)]
    name: String,
    /// display name
    #[argh(option, short = 'd')]
    display_name: Option<String>,
    /// email address
    #[argh(option, short = 'e')]
    email: Option<String>,
    /// profile picture URL (accepted for Headscale compatibility, ignored)
    #[argh(option, short = 'p')]
    picture_url: Option<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// List users.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct UserList {
    /// only the user with this ID
    #[argh(option, short = 'i')]
    identifier: Option<u64>,
    /// only the user with this name
    #[argh(option, short = 'n')]
    name: Option<String>,
    /// only users with this email
    #[argh(option, short = 'e')]
    email: Option<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Rename a user: `users rename --identifier ID NEW` (or `--new-name NEW`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rename")]
struct UserRename {
    /// user ID
    #[argh(option, short = 'i')]
    identifier: Option<u64>,
    /// current user name
    #[argh(option, short = 'n')]
    name: Option<String>,
    /// new user name
    #[argh(option, short = 'r')]
    new_name: Option<String>,
    /// new user name (alternative to --new-name)
    #[argh(positional)]
    new: Option<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Delete a user (refused while it owns nodes).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "destroy")]
struct UserDestroy {
    /// user ID
    #[argh(option, short = 'i')]
    identifier: Option<u64>,
    /// user name
    #[argh(option, short = 'n')]
    name: Option<String>,
    /// accepted for Headscale compatibility (tinyscale never prompts)
    #[argh(switch)]
    force: bool,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

// ----- pre-auth keys --------------------------------------------------

/// Manage pre-auth keys.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "preauthkeys")]
struct PreAuthKeysCmd {
    #[argh(subcommand)]
    cmd: KeysSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum KeysSub {
    Create(KeyCreate),
    List(KeyList),
    Expire(KeyExpire),
    Delete(KeyDelete),
}

/// Create a pre-auth key; prints the key (shown only this once).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "create")]
struct KeyCreate {
    /// owning user (ID or name); optional when --tags is given
    #[argh(option, short = 'u')]
    user: Option<String>,
    /// the key can register several nodes
    #[argh(switch)]
    reusable: bool,
    /// nodes registered with it are ephemeral
    #[argh(switch)]
    ephemeral: bool,
    /// lifetime, e.g. 30m, 24h, 90d (default 1h; as Headscale's, 0 makes a
    /// key that has already expired)
    #[argh(option, short = 'e', default = "String::from(\"1h\")")]
    expiration: String,
    /// tags for nodes registered with it, comma separated (tag:a,tag:b)
    #[argh(option)]
    tags: Vec<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// List pre-auth keys.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct KeyList {
    /// only this user's keys (ID or name)
    #[argh(option, short = 'u')]
    user: Option<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Expire a pre-auth key, named by --id, or by ID, prefix or full key.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "expire")]
struct KeyExpire {
    /// the key must belong to this user (ID or name)
    #[argh(option, short = 'u')]
    user: Option<String>,
    /// key ID
    #[argh(option, short = 'i')]
    id: Option<u64>,
    /// key ID, prefix or the full key
    #[argh(positional)]
    key: Option<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Delete a pre-auth key.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "delete")]
struct KeyDelete {
    /// key ID
    #[argh(option, short = 'i')]
    id: Option<u64>,
    /// key ID, prefix or the full key
    #[argh(positional)]
    key: Option<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Check the running server's health: exit 0 when it answers and can read
/// its database, 1 otherwise (for container health checks).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "health")]
struct HealthCmd {
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Generate keys.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "generate")]
struct GenerateCmd {
    #[argh(subcommand)]
    cmd: GenerateSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum GenerateSub {
    PrivateKey(GeneratePrivateKey),
}

/// Print a new private key (`privkey:<hex>`), e.g. for noise.private_key_path.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "private-key")]
struct GeneratePrivateKey {
    /// output format: json, json-line or yaml
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

// ----- API keys -------------------------------------------------------

/// Manage API keys (for the REST API on the main listener: web UIs, scripts).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "apikeys")]
struct ApiKeysCmd {
    #[argh(subcommand)]
    cmd: ApiKeysSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum ApiKeysSub {
    Create(ApiKeyCreate),
    List(ApiKeyList),
    Expire(ApiKeyExpire),
    Delete(ApiKeyDelete),
}

/// Create an API key; prints it (shown only this once).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "create")]
struct ApiKeyCreate {
    /// lifetime, e.g. 30m, 24h, 90d (default 90d)
    #[argh(option, short = 'e', default = "String::from(\"90d\")")]
    expiration: String,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// List API keys (prefixes only).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ApiKeyList {
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Expire an API key, named by --prefix (as listed) or --id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "expire")]
struct ApiKeyExpire {
    /// key prefix (hskey-api-<prefix>-*** as listed, or the bare prefix)
    #[argh(option, short = 'p')]
    prefix: Option<String>,
    /// key ID
    #[argh(option, short = 'i')]
    id: Option<u64>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Delete an API key, named by --prefix (as listed) or --id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "delete")]
struct ApiKeyDelete {
    /// key prefix (hskey-api-<prefix>-*** as listed, or the bare prefix)
    #[argh(option, short = 'p')]
    prefix: Option<String>,
    /// key ID
    #[argh(option, short = 'i')]
    id: Option<u64>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

// ----- web page ----------------------------------------------------------

/// The admin page under /admin: log in a browser, end sessions.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "web")]
struct WebCmd {
    #[argh(subcommand)]
    cmd: WebSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum WebSub {
    Login(WebLogin),
    Revoke(WebRevoke),
}

/// Print a one-time link (5 minutes, single use) that logs a browser in to
/// the admin page.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "login")]
struct WebLogin {}

/// End every admin page session (and spend unused login links).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revoke")]
struct WebRevoke {}

// ----- interactive logins ---------------------------------------------

/// Approve interactive logins (`tailscale up` without an auth key).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "auth")]
struct AuthCmd {
    #[argh(subcommand)]
    cmd: AuthSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum AuthSub {
    Register(AuthRegister),
    Approve(AuthVerdict),
    Reject(AuthReject),
}

/// Approve a pending login of a machine that already has a node (a
/// re-authentication): its owner stays.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "approve")]
struct AuthVerdict {
    /// registration ID (or the whole URL)
    #[argh(option)]
    auth_id: String,
    /// output format: json, json-line or yaml
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Reject a pending login: the client is sent a fresh login URL.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "reject")]
struct AuthReject {
    /// registration ID (or the whole URL)
    #[argh(option)]
    auth_id: String,
    /// output format: json, json-line or yaml
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Approve a pending login for a user: `auth register --auth-id ID --user U`
/// (the ID is the last part of the URL the client printed).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "register")]
struct AuthRegister {
    /// registration ID (or the whole URL)
    #[argh(option)]
    auth_id: String,
    /// owning user (ID or name)
    #[argh(option, short = 'u')]
    user: String,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Approve a pending login (older Headscale spelling of `auth register`):
/// `nodes register --user U --key ID`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "register")]
struct NodeRegister {
    /// owning user (ID or name)
    #[argh(option, short = 'u')]
    user: String,
    /// registration ID (or the whole URL)
    #[argh(option, short = 'k')]
    key: String,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

// ----- nodes ----------------------------------------------------------

/// Manage nodes.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "nodes")]
struct NodesCmd {
    #[argh(subcommand)]
    cmd: NodesSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum NodesSub {
    List(NodeList),
    Delete(NodeDelete),
    Rename(NodeRename),
    Expire(NodeExpire),
    Tag(NodeTag),
    ApproveRoutes(NodeApproveRoutes),
    ListRoutes(NodeListRoutes),
    Register(NodeRegister),
    Backfillips(NodeBackfill),
}

/// Give every node an address of each configured family (tinyscale does so
/// at registration, so there is nothing to do; kept for scripts).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "backfillips")]
struct NodeBackfill {
    /// output format: json, json-line or yaml
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Set a node's tags (replaces them): `nodes tag -i ID -t tag:a,tag:b`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tag")]
struct NodeTag {
    /// node ID
    #[argh(option, short = 'i')]
    identifier: u64,
    /// tags, comma separated; repeatable; none = remove all tags
    #[argh(option, short = 't')]
    tags: Vec<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Set the routes approved for a node (replaces them; an empty string
/// removes all): `nodes approve-routes -i ID -r 10.0.0.0/8,0.0.0.0/0`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "approve-routes")]
struct NodeApproveRoutes {
    /// node ID
    #[argh(option, short = 'i')]
    identifier: u64,
    /// CIDR prefixes, comma separated; repeatable
    #[argh(option, short = 'r')]
    routes: Vec<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// List advertised and approved routes of nodes that have any.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list-routes")]
struct NodeListRoutes {
    /// only this node
    #[argh(option, short = 'i')]
    identifier: Option<u64>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// List nodes.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct NodeList {
    /// only nodes owned by this user (ID or name)
    #[argh(option, short = 'u')]
    user: Option<String>,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Delete a node.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "delete")]
struct NodeDelete {
    /// node ID
    #[argh(option, short = 'i')]
    identifier: u64,
    /// accepted for Headscale compatibility (tinyscale never prompts)
    #[argh(switch)]
    force: bool,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Rename a node (its MagicDNS name): `nodes rename --identifier ID NEW`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rename")]
struct NodeRename {
    /// node ID
    #[argh(option, short = 'i')]
    identifier: u64,
    /// new name (a DNS label)
    #[argh(positional)]
    new_name: String,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

/// Expire a node's key now (the client must log in again).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "expire")]
struct NodeExpire {
    /// node ID
    #[argh(option, short = 'i')]
    identifier: u64,
    /// expire at this time instead (RFC 3339)
    #[argh(option, short = 'e')]
    expiry: Option<String>,
    /// never expire this node
    #[argh(switch, short = 'd')]
    disable: bool,
    /// output format: json or json-line
    #[argh(option, short = 'o', default = "String::new()")]
    output: String,
}

// ----- entry ----------------------------------------------------------

/// `--config` value taken out of argv, and the rest.
fn take_config_flag(args: &mut Vec<String>) -> Result<Option<PathBuf>, String> {
    let mut found = None;
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--config=") {
            found = Some(PathBuf::from(v));
            args.remove(i);
        } else if a == "--config" || a == "-c" {
            if i + 1 >= args.len() {
                return Err(format!("{a} needs a file path"));
            }
            found = Some(PathBuf::from(args.remove(i + 1)));
            args.remove(i);
        } else {
            i += 1;
        }
    }
    Ok(found)
}

/// Maps Headscale's command aliases onto the canonical names.
fn canonical_commands(args: &mut [String]) {
    let Some(first) = args.get_mut(1) else { return };
    let top = match first.as_str() {
        "user" | "namespaces" | "namespace" => "users",
        "node" | "machines" | "machine" => "nodes",
        "preauthkey" | "authkey" | "authkeys" | "pre" => "preauthkeys",
        "apikey" | "api" => "apikeys",
        "gen" => "generate",
        "dumpConfig" | "dumpconfig" => "dump-config",
        other => other,
    }
    .to_string();
    *first = top.clone();
    let Some(second) = args.get_mut(2) else {
        return;
    };
    let sub = match (top.as_str(), second.as_str()) {
        ("policy", "show" | "view" | "fetch") => "get",
        ("policy", "put" | "update") => "set",
        (_, "ls" | "show") => "list",
        ("users" | "preauthkeys" | "apikeys", "c" | "new") => "create",
        ("apikeys", "remove" | "del") => "delete",
        ("apikeys", "revoke" | "exp" | "e") => "expire",
        ("users", "delete" | "del" | "rm") => "destroy",
        ("users" | "nodes", "mv") => "rename",
        ("preauthkeys" | "nodes", "del" | "rm" | "d") => "delete",
        ("preauthkeys", "revoke" | "exp" | "e") | ("nodes", "logout" | "exp" | "e") => "expire",
        ("nodes", "tags" | "t") => "tag",
        ("nodes", "lsr" | "routes") => "list-routes",
        (_, other) => other,
    };
    *second = sub.to_string();
}

/// Process entry point; returns the exit code.
pub fn main() -> i32 {
    run(std::env::args().collect())
}

/// Runs one command line (`args[0]` is the program name).
pub fn run(mut args: Vec<String>) -> i32 {
    let explicit = match take_config_flag(&mut args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    match take_global_flags(&mut args) {
        Ok(Some(o)) => output::set_global(o),
        Ok(None) => {}
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    }
    if args.len() == 2 && matches!(args[1].as_str(), "--version" | "-V") {
        outln!("tinyscale {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    canonical_commands(&mut args);
    let name = args
        .first()
        .map(|a| {
            std::path::Path::new(a)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("tinyscale")
                .to_string()
        })
        .unwrap_or_else(|| "tinyscale".into());
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let top = match Top::from_args(&[&name], &rest) {
        Ok(t) => t,
        Err(e) => {
            // argh prints help on --help with status Ok.
            return if e.status.is_ok() {
                outln!("{}", e.output);
                0
            } else {
                eprintln!("{}", e.output);
                2
            };
        }
    };
    if top.version {
        outln!("tinyscale {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let Some(cmd) = top.cmd else {
        eprintln!("tinyscale: a command is required; try `{name} --help`");
        return 2;
    };
    match dispatch(cmd, explicit.as_deref()) {
        Ok(()) => 0,
        Err(e) => {
            match output::machine_error(&e) {
                Some(m) => eprintln!("{m}"),
                None => eprintln!("Error: {e}"),
            }
            1
        }
    }
}

/// Takes `-o`/`--output` (anywhere, as Headscale's persistent flag) and
/// `--force` (accepted everywhere: tinyscale never prompts) out of the
/// command line; returns the output format if one was given.
fn take_global_flags(args: &mut Vec<String>) -> Result<Option<String>, String> {
    let mut found = None;
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            break;
        }
        if a == "--force" {
            args.remove(i);
        } else if let Some(v) = a.strip_prefix("--output=") {
            found = Some(v.to_string());
            args.remove(i);
        } else if a == "-o" || a == "--output" {
            if i + 1 >= args.len() {
                return Err(format!("{a} needs a format (json, json-line or yaml)"));
            }
            found = Some(args.remove(i + 1));
            args.remove(i);
        } else {
            i += 1;
        }
    }
    Ok(found)
}

fn load_config(explicit: Option<&std::path::Path>) -> Result<Config, String> {
    config::load(explicit)
        .map(|(c, _)| c)
        .map_err(|e| e.to_string())
}

/// Runs the server until it exits.
fn serve(cfg: Config) -> std::io::Result<()> {
    crate::app::serve(cfg)
}

fn dispatch(cmd: Cmd, explicit: Option<&std::path::Path>) -> Result<(), String> {
    match cmd {
        Cmd::Version(v) => {
            let f = Format::parse(&v.output)?;
            let ver = env!("CARGO_PKG_VERSION");
            if !output::machine(f, &json!({ "version": ver })) {
                outln!("tinyscale {ver}");
            }
            Ok(())
        }
        Cmd::Policy(crate::policy::cli::PolicyCmd {
            cmd: crate::policy::cli::PolicySub::Get(_),
        }) => {
            let cfg = load_config(explicit)?;
            let v =
                client::request(&cfg, "GET", "/api/v1/policy", None).map_err(|e| e.to_string())?;
            let problem = v.get("error").and_then(|e| e.as_str());
            if let Some(e) = problem {
                eprintln!("WARNING: {e}");
            }
            let text = v.get("policy").and_then(|p| p.as_str()).unwrap_or("");
            if text.is_empty() && problem.is_none() {
                eprintln!("no policy in force (every node may reach every other)");
            } else {
                outln!("{}", text.trim_end());
            }
            Ok(())
        }
        Cmd::Policy(crate::policy::cli::PolicyCmd {
            cmd: crate::policy::cli::PolicySub::Set(s),
        }) => {
            let cfg = load_config(explicit)?;
            let text = std::fs::read_to_string(&s.file).map_err(|e| format!("{}: {e}", s.file))?;
            if text.len() as u64 > crate::control::policy::MAX_POLICY {
                return Err(format!(
                    "{}: larger than {} bytes",
                    s.file,
                    crate::control::policy::MAX_POLICY
                ));
            }
            // The admin socket takes requests of at most admin::MAX_BODY
            // bytes; say so here rather than let the server answer 413.
            let req = json!({ "policy": text });
            let encoded = req.to_string().len();
            if encoded > crate::api::MAX_BODY {
                return Err(format!(
                    "{}: the policy is {} bytes as a request ({encoded} bytes of JSON); `policy set` sends at most {} bytes over the admin socket. Use policy.mode: file with policy.path for a larger policy (up to {} bytes)",
                    s.file,
                    text.len(),
                    crate::api::MAX_BODY,
                    crate::control::policy::MAX_POLICY
                ));
            }
            client::request(&cfg, "PUT", "/api/v1/policy", Some(&req))
                .map_err(|e| e.to_string())?;
            outln!("Policy updated.");
            Ok(())
        }
        Cmd::Policy(crate::policy::cli::PolicyCmd {
            cmd: crate::policy::cli::PolicySub::Check(c),
        }) if c.topology.is_none() => policy_check(explicit, &c.file),
        Cmd::Policy(p) => match crate::policy::cli::run(p) {
            0 => Ok(()),
            // The policy tools print their own error.
            code => std::process::exit(code),
        },
        Cmd::Debug(d) => match crate::debug::run(d) {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Cmd::ConfigTest(_) => {
            let (cfg, file) = config::load(explicit).map_err(|e| e.to_string())?;
            match file {
                Some(f) => outln!("config OK: {}", f.display()),
                None => outln!("config OK: no file found, using the embedded defaults"),
            }
            outln!("server_url: {}", cfg.server_url);
            outln!("data_dir: {}", cfg.data_dir.display());
            outln!("database: {}", cfg.database_path.display());
            outln!("unix_socket: {}", cfg.unix_socket.display());
            Ok(())
        }
        Cmd::DumpConfig(_) => {
            let cfg = load_config(explicit)?;
            out!("{}", config::dump_yaml(&cfg));
            Ok(())
        }
        Cmd::Serve(_) => {
            let cfg = load_config(explicit)?;
            serve(cfg).map_err(|e| e.to_string())
        }
        Cmd::Users(u) => {
            let cfg = load_config(explicit)?;
            users(&Api(&cfg), u.cmd)
        }
        Cmd::PreAuthKeys(k) => {
            let cfg = load_config(explicit)?;
            keys(&Api(&cfg), k.cmd)
        }
        Cmd::Nodes(n) => {
            let cfg = load_config(explicit)?;
            nodes(&Api(&cfg), n.cmd)
        }
        Cmd::Health(h) => {
            let cfg = load_config(explicit)?;
            let f = Format::parse(&h.output)?;
            let r = Api(&cfg).call("GET", "/api/v1/health", None)?;
            let up = r["databaseConnectivity"].as_bool() == Some(true);
            // Go's encoding/json of the response: false is omitted.
            let v = if up {
                json!({ "database_connectivity": true })
            } else {
                json!({})
            };
            if !output::machine(f, &v) && up {
                outln!("healthy: the server answers and its database is readable");
            }
            if up {
                Ok(())
            } else {
                Err("the server cannot read its database".into())
            }
        }
        Cmd::Generate(GenerateCmd {
            cmd: GenerateSub::PrivateKey(g),
        }) => {
            let f = Format::parse(&g.output)?;
            let key = format!("privkey:{}", crate::keys::to_hex(&crate::keys::random32()));
            if !output::machine(f, &json!({ "private_key": key })) {
                outln!("{key}");
            }
            Ok(())
        }
        Cmd::ApiKeys(k) => {
            let cfg = load_config(explicit)?;
            api_keys(&Api(&cfg), k.cmd)
        }
        Cmd::Web(w) => {
            let cfg = load_config(explicit)?;
            let api = Api(&cfg);
            match w.cmd {
                WebSub::Login(_) => {
                    let r = api.call("POST", "/api/v1/web/login-link", None)?;
                    let url: String = field(&r, "url")?;
                    outln!("{url}");
                }
                WebSub::Revoke(_) => {
                    let r = api.call("POST", "/api/v1/web/sessions/revoke", None)?;
                    let n: u64 = field(&r, "revoked")?;
                    outln!("{n} session(s) ended");
                }
            }
            Ok(())
        }
        #[cfg(feature = "migrate")]
        Cmd::Migrate(m) => migrate::migrate(explicit, m),
        Cmd::Backup(b) => migrate::backup(&load_config(explicit)?, b),
        Cmd::Restore(r) => migrate::restore(&load_config(explicit)?, r),
        Cmd::Auth(a) => {
            let cfg = load_config(explicit)?;
            let (verb, id, output) = match a.cmd {
                AuthSub::Register(r) => {
                    return register(&Api(&cfg), &r.auth_id, &r.user, &r.output)
                }
                AuthSub::Approve(v) => ("approve", v.auth_id, v.output),
                AuthSub::Reject(v) => ("reject", v.auth_id, v.output),
            };
            let f = Format::parse(&output)?;
            let id = id.rsplit('/').next().unwrap_or(&id).to_string();
            let r = Api(&cfg).call(
                "POST",
                &format!("/api/v1/auth/{verb}"),
                Some(json!({ "authId": id })),
            )?;
            if !output::machine(f, &r) {
                outln!("Auth request {verb}d");
            }
            Ok(())
        }
    }
}

/// The configured server: its admin socket, or its REST API at
/// `cli.address` (src/cli/client.rs).
struct Api<'a>(&'a Config);

impl Api<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        client::request(self.0, method, path, body.as_ref()).map_err(|e| e.to_string())
    }
}

fn field<T: serde::de::DeserializeOwned>(v: &Value, key: &str) -> Result<T, String> {
    serde_json::from_value(v.get(key).cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("unexpected answer from server ({key}): {e}"))
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'@') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn user_ref(id: Option<u64>, name: Option<String>) -> Result<String, String> {
    match (id, name) {
        (Some(i), _) => Ok(i.to_string()),
        (None, Some(n)) if !n.is_empty() => Ok(n),
        _ => Err("--name or --identifier flag is required".into()),
    }
}

fn print_users(f: Format, list: &[ApiUser]) {
    if output::machine(f, list) {
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|u| {
            vec![
                u.id.clone(),
                u.name.clone(),
                u.display_name.clone(),
                u.email.clone(),
                short_time(&u.created_at),
            ]
        })
        .collect();
    out!(
        "{}",
        table(&["ID", "Name", "Display name", "Email", "Created"], &rows)
    );
}

fn users(api: &Api, cmd: UsersSub) -> Result<(), String> {
    match cmd {
        UsersSub::Create(c) => {
            let f = Format::parse(&c.output)?;
            let _ = c.picture_url;
            let r = api.call(
                "POST",
                "/api/v1/user",
                Some(json!({
                    "name": c.name,
                    "displayName": c.display_name.unwrap_or_default(),
                    "email": c.email.unwrap_or_default(),
                })),
            )?;
            let u: ApiUser = field(&r, "user")?;
            if !output::machine(f, &u) {
                outln!("User created");
            }
        }
        UsersSub::List(l) => {
            let f = Format::parse(&l.output)?;
            let mut q = Vec::new();
            if let Some(i) = l.identifier {
                q.push(format!("id={i}"));
            }
            if let Some(n) = &l.name {
                q.push(format!("name={}", enc(n)));
            }
            if let Some(e) = &l.email {
                q.push(format!("email={}", enc(e)));
            }
            let path = if q.is_empty() {
                "/api/v1/user".to_string()
            } else {
                format!("/api/v1/user?{}", q.join("&"))
            };
            let r = api.call("GET", &path, None)?;
            let list: Vec<ApiUser> = field(&r, "users")?;
            print_users(f, &list);
        }
        UsersSub::Rename(r) => {
            let f = Format::parse(&r.output)?;
            let who = user_ref(r.identifier, r.name)?;
            let new = r
                .new_name
                .or(r.new)
                .ok_or("the new name is required (--new-name NEW or a positional NEW)")?;
            let res = api.call(
                "POST",
                &format!("/api/v1/user/{}/rename/{}", enc(&who), enc(&new)),
                None,
            )?;
            let u: ApiUser = field(&res, "user")?;
            if !output::machine(f, &u) {
                outln!("User renamed");
            }
        }
        UsersSub::Destroy(d) => {
            let f = Format::parse(&d.output)?;
            let _ = d.force;
            let who = user_ref(d.identifier, d.name)?;
            let r = api.call("DELETE", &format!("/api/v1/user/{}", enc(&who)), None)?;
            if !output::machine(f, &r) {
                outln!("User destroyed");
            }
        }
    }
    Ok(())
}

fn keys(api: &Api, cmd: KeysSub) -> Result<(), String> {
    match cmd {
        KeysSub::Create(c) => {
            let f = Format::parse(&c.output)?;
            let secs = config::parse_long_duration(&c.expiration)
                .map_err(|e| format!("--expiration: invalid duration {:?}: {e}", c.expiration))?
                .as_secs();
            let t = crate::state::now().saturating_add(secs as i64);
            let expiration = Value::String(crate::timefmt::rfc3339(t));
            let tags = split_list(&c.tags);
            let r = api.call(
                "POST",
                "/api/v1/preauthkey",
                Some(json!({
                    "user": c.user.unwrap_or_default(),
                    "reusable": c.reusable,
                    "ephemeral": c.ephemeral,
                    "expiration": expiration,
                    "aclTags": tags,
                })),
            )?;
            let k: ApiPreAuthKey = field(&r, "preAuthKey")?;
            if !output::machine(f, &k) {
                outln!("{}", k.key);
            }
        }
        KeysSub::List(l) => {
            let f = Format::parse(&l.output)?;
            let path = match &l.user {
                Some(u) => format!("/api/v1/preauthkey?user={}", enc(u)),
                None => "/api/v1/preauthkey".into(),
            };
            let r = api.call("GET", &path, None)?;
            let list: Vec<ApiPreAuthKey> = field(&r, "preAuthKeys")?;
            if output::machine(f, &list) {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|k| {
                    let owner = if !k.acl_tags.is_empty() {
                        k.acl_tags.join(",")
                    } else {
                        k.user.as_ref().map_or("-".into(), |u| u.name.clone())
                    };
                    vec![
                        k.id.clone(),
                        k.key.clone(),
                        k.reusable.to_string(),
                        k.ephemeral.to_string(),
                        k.used.to_string(),
                        k.expiration.as_deref().map_or("never".into(), short_time),
                        short_time(&k.created_at),
                        owner,
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        "ID",
                        "Key/Prefix",
                        "Reusable",
                        "Ephemeral",
                        "Used",
                        "Expiration",
                        "Created",
                        "Owner"
                    ],
                    &rows
                )
            );
        }
        KeysSub::Expire(e) => {
            let f = Format::parse(&e.output)?;
            let which =
                e.id.map(|i| i.to_string())
                    .or(e.key)
                    .ok_or("which key? give --id ID, or a key ID, prefix or the key itself")?;
            let r = api.call(
                "POST",
                "/api/v1/preauthkey/expire",
                Some(json!({ "id": which, "user": e.user.unwrap_or_default() })),
            )?;
            if !output::machine(f, &r) {
                outln!("Key expired");
            }
        }
        KeysSub::Delete(d) => {
            let f = Format::parse(&d.output)?;
            let which =
                d.id.map(|i| i.to_string())
                    .or(d.key)
                    .ok_or("which key? give --id ID, or a key ID, prefix or the key itself")?;
            let r = api.call(
                "DELETE",
                &format!("/api/v1/preauthkey?id={}", enc(&which)),
                None,
            )?;
            if !output::machine(f, &r) {
                outln!("Key deleted");
            }
        }
    }
    Ok(())
}

fn api_keys(api: &Api, cmd: ApiKeysSub) -> Result<(), String> {
    let key_ref = |prefix: Option<String>, id: Option<u64>| {
        prefix
            .filter(|p| !p.is_empty())
            .or(id.map(|i| i.to_string()))
            .ok_or_else(|| "which key? give --prefix PREFIX or --id ID".to_string())
    };
    match cmd {
        ApiKeysSub::Create(c) => {
            let f = Format::parse(&c.output)?;
            let secs = config::parse_long_duration(&c.expiration)
                .map_err(|e| format!("--expiration: invalid duration {:?}: {e}", c.expiration))?
                .as_secs();
            let t = crate::state::now().saturating_add(secs as i64);
            let r = api.call(
                "POST",
                "/api/v1/apikey",
                Some(json!({ "expiration": crate::timefmt::rfc3339(t) })),
            )?;
            let key: String = field(&r, "apiKey")?;
            if !output::machine(f, &key) {
                outln!("{key}");
            }
        }
        ApiKeysSub::List(l) => {
            let f = Format::parse(&l.output)?;
            let list: Vec<crate::api::types::ApiApiKey> =
                field(&api.call("GET", "/api/v1/apikey", None)?, "apiKeys")?;
            if output::machine(f, &list) {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.prefix.clone(),
                        k.expiration.as_deref().map_or("-".into(), short_time),
                        k.created_at.as_deref().map_or("-".into(), short_time),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(&["ID", "Prefix", "Expiration", "Created"], &rows)
            );
        }
        ApiKeysSub::Expire(e) => {
            let f = Format::parse(&e.output)?;
            let which = key_ref(e.prefix, e.id)?;
            let r = api.call(
                "POST",
                "/api/v1/apikey/expire",
                Some(json!({ "prefix": which })),
            )?;
            if !output::machine(f, &r) {
                outln!("Key expired");
            }
        }
        ApiKeysSub::Delete(d) => {
            let f = Format::parse(&d.output)?;
            let which = key_ref(d.prefix, d.id)?;
            let r = api.call("DELETE", &format!("/api/v1/apikey/{}", enc(&which)), None)?;
            if !output::machine(f, &r) {
                outln!("Key deleted");
            }
        }
    }
    Ok(())
}

/// `policy check --file F`: with a server running, exactly what `policy
/// set` would check (its `tests` against the live tailnet); without one,
/// everything else, naming the tests left unevaluated.
fn policy_check(explicit: Option<&std::path::Path>, file: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    if let Ok(cfg) = load_config(explicit) {
        let body = json!({ "policy": text });
        match client::request(&cfg, "POST", "/api/v1/policy/check", Some(&body)) {
            Ok(_) => {
                outln!("Policy is valid (checked by the running server, tests included)");
                return Ok(());
            }
            Err(client::ClientError::Unreachable(_)) => {}
            Err(e) => return Err(format!("{file}: {e}")),
        }
    }
    let (tests, ssh_tests) =
        crate::policy::cli::check_offline(&text).map_err(|e| format!("{file}: {e}"))?;
    outln!("Policy is valid");
    if tests + ssh_tests > 0 {
        eprintln!(
            "note: {tests} tests and {ssh_tests} sshTests not evaluated: no running server \
             to resolve users, groups and tags against (run it with the server up)"
        );
    }
    Ok(())
}

/// Approves a pending interactive login.
fn register(api: &Api, id: &str, user: &str, output: &str) -> Result<(), String> {
    let f = Format::parse(output)?;
    // Accept the whole AuthURL as printed by the client.
    let id = id.rsplit('/').next().unwrap_or(id);
    let r = api.call(
        "POST",
        "/api/v1/auth/register",
        Some(json!({ "authId": id, "user": user })),
    )?;
    let n: ApiNode = field(&r, "node")?;
    if !output::machine(f, &n) {
        outln!("Node {} registered", n.given_name);
    }
    Ok(())
}

/// Comma-separated, repeatable list flag values.
fn split_list(v: &[String]) -> Vec<String> {
    v.iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// POSTs to `/api/v1/node/{id}{path}` and prints the node it returns
/// (`-o json…`) or `done` (a table format).
fn node_change(
    api: &Api,
    output: &str,
    id: impl std::fmt::Display,
    path: &str,
    body: Option<Value>,
    done: &str,
) -> Result<(), String> {
    let f = Format::parse(output)?;
    let res = api.call("POST", &format!("/api/v1/node/{id}{path}"), body)?;
    let n: ApiNode = field(&res, "node")?;
    if !output::machine(f, &n) {
        outln!("{done}");
    }
    Ok(())
}

fn nodes(api: &Api, cmd: NodesSub) -> Result<(), String> {
    match cmd {
        NodesSub::Register(r) => register(api, &r.key, &r.user, &r.output)?,
        NodesSub::Backfillips(b) => {
            let f = Format::parse(&b.output)?;
            let r = api.call("POST", "/api/v1/node/backfillips?confirmed=true", None)?;
            if !output::machine(f, &r["changes"]) {
                outln!("Node IPs backfilled successfully");
            }
        }
        NodesSub::Tag(t) => node_change(
            api,
            &t.output,
            t.identifier,
            "/tags",
            Some(json!({ "tags": split_list(&t.tags) })),
            "Node updated",
        )?,
        NodesSub::ApproveRoutes(r) => node_change(
            api,
            &r.output,
            r.identifier,
            "/approve_routes",
            Some(json!({ "routes": split_list(&r.routes) })),
            "Node updated",
        )?,
        NodesSub::ListRoutes(l) => {
            let f = Format::parse(&l.output)?;
            let list: Vec<ApiNode> = match l.identifier {
                Some(id) => vec![field(
                    &api.call("GET", &format!("/api/v1/node/{id}"), None)?,
                    "node",
                )?],
                None => field(&api.call("GET", "/api/v1/node", None)?, "nodes")?,
            };
            let list: Vec<ApiNode> = list
                .into_iter()
                .filter(|n| {
                    l.identifier.is_some()
                        || !n.available_routes.is_empty()
                        || !n.approved_routes.is_empty()
                })
                .collect();
            if output::machine(f, &list) {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|n| {
                    vec![
                        n.id.clone(),
                        n.given_name.clone(),
                        n.approved_routes.join(", "),
                        n.available_routes.join(", "),
                        n.subnet_routes.join(", "),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &["ID", "Name", "Approved", "Available", "Serving (Primary)"],
                    &rows
                )
            );
        }
        NodesSub::List(l) => {
            let f = Format::parse(&l.output)?;
            let path = match &l.user {
                Some(u) => format!("/api/v1/node?user={}", enc(u)),
                None => "/api/v1/node".into(),
            };
            let r = api.call("GET", &path, None)?;
            let list: Vec<ApiNode> = field(&r, "nodes")?;
            if output::machine(f, &list) {
                return Ok(());
            }
            let now = crate::state::now();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|n| {
                    let owner = if !n.tags.is_empty() {
                        n.tags.join(",")
                    } else {
                        n.user.as_ref().map_or("-".into(), |u| u.name.clone())
                    };
                    let expired = n
                        .expiry
                        .as_deref()
                        .and_then(crate::timefmt::parse_rfc3339)
                        .is_some_and(|t| t != 0 && t <= now);
                    vec![
                        n.id.clone(),
                        n.name.clone(),
                        n.given_name.clone(),
                        owner,
                        n.ip_addresses.join(", "),
                        if n.online { "online" } else { "offline" }.to_string(),
                        n.last_seen.as_deref().map_or("-".into(), short_time),
                        if expired { "yes" } else { "no" }.to_string(),
                        if n.subnet_routes.is_empty() {
                            "-".into()
                        } else {
                            n.subnet_routes.join(",")
                        },
                        if n.client_version.is_empty() {
                            "-".into()
                        } else {
                            n.client_version.clone()
                        },
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        "ID",
                        "Hostname",
                        "Name",
                        "User/Tags",
                        "IP addresses",
                        "Connected",
                        "Last seen",
                        "Expired",
                        "Routes",
                        "Version"
                    ],
                    &rows
                )
            );
        }
        NodesSub::Delete(d) => {
            let f = Format::parse(&d.output)?;
            let _ = d.force;
            api.call("DELETE", &format!("/api/v1/node/{}", d.identifier), None)?;
            // Headscale prints a Go map here, not the (empty) response.
            if !output::machine(f, &json!({ "Result": "Node deleted" })) {
                outln!("Node deleted");
            }
        }
        NodesSub::Rename(r) => node_change(
            api,
            &r.output,
            r.identifier,
            &format!("/rename/{}", enc(&r.new_name)),
            None,
            "Node renamed",
        )?,
        NodesSub::Expire(e) => {
            let mut body = json!({});
            if e.disable {
                body["disableExpiry"] = Value::Bool(true);
            } else if let Some(t) = e.expiry {
                if crate::timefmt::parse_rfc3339(&t).is_none() {
                    return Err(format!("--expiry: invalid time {t:?} (want RFC 3339)"));
                }
                body["expiry"] = Value::String(t);
            }
            node_change(
                api,
                &e.output,
                e.identifier,
                "/expire",
                Some(body),
                "Node expired",
            )?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn config_flag_anywhere() {
        let mut a = v(&["ts", "users", "list", "--config", "/x.yaml", "-o", "json"]);
        assert_eq!(take_config_flag(&mut a).unwrap(), Some("/x.yaml".into()));
        assert_eq!(a, v(&["ts", "users", "list", "-o", "json"]));
        let mut a = v(&["ts", "--config=/y", "nodes", "list"]);
        assert_eq!(take_config_flag(&mut a).unwrap(), Some("/y".into()));
        assert_eq!(a, v(&["ts", "nodes", "list"]));
        let mut a = v(&["ts", "-c", "/z", "serve"]);
        assert_eq!(take_config_flag(&mut a).unwrap(), Some("/z".into()));
        assert!(take_config_flag(&mut v(&["ts", "serve", "--config"])).is_err());
    }

    #[test]
    fn aliases() {
        let mut a = v(&["ts", "user", "ls"]);
        canonical_commands(&mut a);
        assert_eq!(a, v(&["ts", "users", "list"]));
        let mut a = v(&["ts", "dumpConfig"]);
        canonical_commands(&mut a);
        assert_eq!(a, v(&["ts", "dump-config"]));
        let mut a = v(&["ts", "authkey", "revoke", "3"]);
        canonical_commands(&mut a);
        assert_eq!(a, v(&["ts", "preauthkeys", "expire", "3"]));
    }

    #[test]
    fn parses_headscale_style_lines() {
        let p = |s: &[&str]| Top::from_args(&["tinyscale"], s);
        assert!(p(&["users", "rename", "--identifier", "1", "--new-name", "x"]).is_ok());
        assert!(p(&["users", "rename", "-i", "1", "x"]).is_ok());
        assert!(p(&["users", "destroy", "--identifier", "1", "--force"]).is_ok());
        assert!(p(&[
            "preauthkeys",
            "create",
            "--user",
            "1",
            "--reusable",
            "--expiration",
            "24h",
            "--tags",
            "tag:a,tag:b",
            "-o",
            "json"
        ])
        .is_ok());
        assert!(p(&["nodes", "delete", "--identifier", "3", "--force"]).is_ok());
        assert!(p(&["nodes", "rename", "--identifier", "3", "web"]).is_ok());
        assert!(p(&["nodes", "expire", "-i", "3"]).is_ok());
        assert!(p(&["--version"]).is_ok());
    }
}
