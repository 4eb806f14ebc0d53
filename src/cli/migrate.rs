//! `tinyscale migrate --from-headscale`, `backup` and `restore`: moving a
//! tailnet in, and never losing one.
//!
//! `migrate` reads Headscale's database read-only and takes over its Noise
//! and DERP private keys, so every client reconnects on its own to what it
//! sees as the same server, with the same addresses, names and keys. It is
//! a dry run unless `--apply`, and it only ever writes into a fresh
//! tinyscale data directory.

#[cfg(feature = "migrate")]
use crate::config;
use crate::config::Config;
#[cfg(feature = "migrate")]
use crate::migrate::headscale::{self, Import};
#[cfg(feature = "migrate")]
use crate::state::Op;
use crate::state::Store;
use argh::FromArgs;
use serde_json::json;
#[cfg(feature = "migrate")]
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Take over a Headscale server: its users, nodes, pre-auth and API keys,
/// policy and private keys (prints what it would import unless --apply).
#[cfg(feature = "migrate")]
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "migrate")]
pub struct MigrateCmd {
    /// headscale's SQLite database (read-only; default: database.sqlite.path
    /// of --headscale-config)
    #[argh(option)]
    from_headscale: Option<String>,
    /// headscale's config.yaml: where its keys, database and policy are, and
    /// the settings to translate (see --write-config)
    #[argh(option)]
    headscale_config: Option<String>,
    /// headscale's Noise private key file (default: noise.private_key_path
    /// of --headscale-config)
    #[argh(option)]
    noise_key: Option<String>,
    /// headscale's DERP private key file (default:
    /// derp.server.private_key_path of --headscale-config)
    #[argh(option)]
    derp_key: Option<String>,
    /// write the tinyscale config translated from --headscale-config to this
    /// new file
    #[argh(option)]
    write_config: Option<String>,
    /// write into the (fresh) tinyscale data directory; without it nothing
    /// is written
    #[argh(switch)]
    apply: bool,
}

/// Write a consistent copy of the running server's database to FILE (serve
/// can start from it: see restore).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "backup")]
pub struct BackupCmd {
    /// the new backup file (must not exist)
    #[argh(positional)]
    file: String,
    /// also put the server's Noise and DERP private keys in it (keep such a
    /// file as secret as the keys)
    #[argh(switch)]
    with_keys: bool,
}

/// Replace a stopped server's database with a backup; the old one is kept
/// next to it as <database>.before-restore-<time>.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restore")]
pub struct RestoreCmd {
    /// a file written by `tinyscale backup`
    #[argh(positional)]
    file: String,
}

pub fn backup(cfg: &Config, c: BackupCmd) -> Result<(), String> {
    if let Some(addr) = super::client::remote_address(cfg) {
        // The server writes the file on its own disk: that is for the
        // local admin only (the REST route answers 403).
        return Err(format!(
            "backup works only over the local admin socket (the server writes the file on its own machine); unset HEADSCALE_CLI_ADDRESS / cli.address ({addr}) and run it on the server"
        ));
    }
    let path = absolute(Path::new(&c.file))?;
    let v = super::client::request(
        cfg,
        "POST",
        "/api/v1/backup",
        Some(&json!({ "path": path.to_string_lossy(), "withKeys": c.with_keys })),
    )
    .map_err(|e| e.to_string())?;
    outln!(
        "Backup written to {} ({} bytes{}).",
        path.display(),
        v.get("bytes")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        if c.with_keys {
            ", with the server's private keys"
        } else {
            ""
        }
    );
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    Ok(cwd.join(p))
}

/// Fails if a server answers on the admin socket.
fn ensure_stopped(cfg: &Config) -> Result<(), String> {
    if std::os::unix::net::UnixStream::connect(&cfg.unix_socket).is_ok() {
        return Err(format!(
            "a tinyscale server is running (it answers on {}); stop it first",
            cfg.unix_socket.display()
        ));
    }
    Ok(())
}

pub fn restore(cfg: &Config, c: RestoreCmd) -> Result<(), String> {
    ensure_stopped(cfg)?;
    let db = &cfg.database_path;
    let mut tmp = db.as_os_str().to_owned();
    tmp.push(".restoring");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    if let Some(dir) = db.parent() {
        crate::control::create_private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    copy_private(Path::new(&c.file), &tmp)?;
    // Opening the copy upgrades an older schema and refuses a newer one;
    // either way the live database has not been touched yet.
    let keys = (|| {
        let store = Store::open(&tmp).map_err(|e| format!("{}: {e}", c.file))?;
        let noise = store
            .take_meta(crate::state::store::META_BACKUP_NOISE_KEY)
            .map_err(|e| e.to_string())?;
        let derp = store
            .take_meta(crate::state::store::META_BACKUP_DERP_KEY)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((noise, derp))
    })();
    let (noise, derp) = match keys {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    for (key, path) in [
        (noise, cfg.noise_private_key_path.clone()),
        (derp, crate::control::derp_key_path(cfg)),
    ] {
        let Some(key) = key.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok()) else {
            continue;
        };
        replace_key(&path, &key)?;
        outln!("Restored private key {}", path.display());
    }
    if db.exists() {
        let old = format!("{}.before-restore-{}", db.display(), crate::state::now());
        std::fs::rename(db, &old).map_err(|e| format!("moving {} aside: {e}", db.display()))?;
        outln!("Previous database kept as {old}");
    }
    std::fs::rename(&tmp, db).map_err(|e| format!("{}: {e}", db.display()))?;
    sync_dir(db);
    outln!("Restored {} from {}.", db.display(), c.file);
    Ok(())
}

/// Copies `from` to the new file `to` (0600) and syncs it.
fn copy_private(from: &Path, to: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| format!("{}: {e}", to.display()))?;
    std::io::copy(&mut src, &mut dst).map_err(|e| format!("copying to {}: {e}", to.display()))?;
    dst.sync_all().map_err(|e| format!("{}: {e}", to.display()))
}

/// Writes a key file atomically (replacing what was there).
fn replace_key(path: &Path, key: &[u8; 32]) -> Result<(), String> {
    crate::control::write_new_key(path, key).map_err(|e| format!("{}: {e}", path.display()))
}

fn sync_dir(p: &Path) {
    if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
}

// ----- migrate (feature `migrate`) ------------------------------------

#[cfg(feature = "migrate")]
mod headscale_in {
    use super::*;

    /// What the Headscale config says, as far as migration cares.
    #[derive(Default)]
    struct HsConfig {
        doc: Value,
        database: Option<PathBuf>,
        noise_key: Option<PathBuf>,
        derp_key: Option<PathBuf>,
        policy_mode: String,
        policy_path: Option<PathBuf>,
    }

    fn read_hs_config(path: &str) -> Result<HsConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let doc = config::yaml::parse(&text).map_err(|e| format!("{path}: {e}"))?;
        let get = |k: &str| -> Option<String> {
            let mut v = &doc;
            for part in k.split('.') {
                v = v.get(part)?;
            }
            v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
        };
        if let Some(t) = get("database.type") {
            if t != "sqlite" && t != "sqlite3" {
                return Err(format!(
                    "{path}: database.type is {t:?}; only Headscale's SQLite database can be read"
                ));
            }
        }
        Ok(HsConfig {
            database: get("database.sqlite.path").map(PathBuf::from),
            noise_key: get("noise.private_key_path").map(PathBuf::from),
            derp_key: get("derp.server.private_key_path").map(PathBuf::from),
            policy_mode: get("policy.mode").unwrap_or_else(|| "file".into()),
            policy_path: get("policy.path").map(PathBuf::from),
            doc,
        })
    }

    /// Headscale keys migration itself takes care of (not reported as lost).
    const HANDLED: &[&str] = &[
        "noise.private_key_path",
        "derp.server.private_key_path",
        "database.type",
        "database.sqlite.path",
    ];
    /// tinyscale keys whose Headscale values would point into Headscale's own
    /// directories: tinyscale's defaults (in its data directory) are kept.
    /// The admin socket's mode stays tinyscale's owner-only default too.
    const OWN: &[&str] = &[
        "database.path",
        "unix_socket",
        "unix_socket_permission",
        "noise.private_key_path",
        "derp.server.private_key_path",
    ];

    /// tinyscale's config from Headscale's: every key tinyscale reads under the
    /// same name is carried over; returns the YAML and the keys left behind.
    pub fn translate_config(doc: &Value) -> (String, Vec<String>) {
        fn walk(v: &Value, prefix: &str, kept: &mut Value, lost: &mut Vec<String>) {
            let Value::Object(m) = v else { return };
            for (k, child) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let known = config::KNOWN.contains(&p.as_str());
                if known && !OWN.contains(&p.as_str()) {
                    insert(kept, &p, child.clone());
                } else if !known && child.is_object() {
                    // Known children are kept, the rest reported leaf by leaf.
                    walk(child, &p, kept, lost);
                } else if !HANDLED.contains(&p.as_str()) && !child.is_null() {
                    lost.push(p);
                }
            }
        }
        fn insert(root: &mut Value, dotted: &str, v: Value) {
            let mut cur = root;
            let parts: Vec<&str> = dotted.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let Value::Object(m) = cur else { return };
                if i + 1 == parts.len() {
                    m.insert(part.to_string(), v);
                    return;
                }
                cur = m.entry(part.to_string()).or_insert_with(|| json!({}));
            }
        }
        let mut kept = json!({});
        let mut lost = Vec::new();
        walk(doc, "", &mut kept, &mut lost);
        let mut out =
            String::from("# Translated from a Headscale config by `tinyscale migrate`.\n");
        emit_yaml(&kept, 0, &mut out);
        (out, lost)
    }

    /// Block mappings; every scalar and list is written as JSON, which YAML
    /// (and tinyscale's loader) reads as flow style.
    fn emit_yaml(v: &Value, indent: usize, out: &mut String) {
        let Value::Object(m) = v else { return };
        for (k, child) in m {
            let pad = " ".repeat(indent);
            match child {
                Value::Object(c) if !c.is_empty() => {
                    out.push_str(&format!("{pad}{k}:\n"));
                    emit_yaml(child, indent + 2, out);
                }
                _ => out.push_str(&format!("{pad}{k}: {child}\n")),
            }
        }
    }

    fn read_key_file(path: &Path) -> Result<[u8; 32], String> {
        let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        crate::control::parse_key_file(&s).ok_or_else(|| {
            format!(
                "{}: not a private key (want privkey:<64 hex>)",
                path.display()
            )
        })
    }

    /// Puts `key` at `path` unless the same key is already there; a different
    /// key there is an error (that would be another server's identity).
    fn install_key(path: &Path, key: &[u8; 32]) -> Result<(), String> {
        match std::fs::read_to_string(path) {
            Ok(s) if crate::control::parse_key_file(&s) == Some(*key) => Ok(()),
            Ok(_) => Err(format!(
                "{} already holds a different key; remove it to take over Headscale's",
                path.display()
            )),
            Err(_) => crate::control::write_new_key(path, key)
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }

    fn summary(imp: &Import) {
        outln!("users:          {}", imp.users.len());
        outln!("nodes:          {}", imp.nodes.len());
        outln!("pre-auth keys:  {}", imp.keys.len());
        outln!("api keys:       {}", imp.api_keys.len());
        outln!(
            "policy:         {}",
            if imp.policy.is_some() {
                "yes (database mode)"
            } else {
                "none in the database"
            }
        );
        if imp.deleted > 0 {
            outln!("soft-deleted rows ignored: {}", imp.deleted);
        }
        for n in &imp.notes {
            outln!("note: {n}");
        }
        for s in &imp.skipped {
            outln!("cannot import {s}");
        }
    }

    pub fn migrate(explicit: Option<&Path>, c: MigrateCmd) -> Result<(), String> {
        let hs = match &c.headscale_config {
            Some(p) => read_hs_config(p)?,
            None => HsConfig::default(),
        };
        let db_path = c
            .from_headscale
            .as_ref()
            .map(PathBuf::from)
            .or(hs.database.clone())
            .ok_or("give --from-headscale PATH/db.sqlite (or --headscale-config naming it)")?;
        let imp = headscale::read(&db_path)?;
        let noise_path = c
            .noise_key
            .as_ref()
            .map(PathBuf::from)
            .or(hs.noise_key.clone());
        let derp_path = c
            .derp_key
            .as_ref()
            .map(PathBuf::from)
            .or(hs.derp_key.clone());
        let noise = noise_path.as_deref().map(read_key_file).transpose()?;
        // Headscale writes its DERP key only when its embedded DERP ran.
        let derp = match derp_path.as_deref() {
            Some(p) if p.exists() || c.derp_key.is_some() => Some(read_key_file(p)?),
            _ => None,
        };
        outln!(
            "{} Headscale database {}:",
            if c.apply {
                "Importing"
            } else {
                "Would import (dry run, nothing written)"
            },
            db_path.display()
        );
        summary(&imp);
        match (&noise, &noise_path) {
            (Some(_), Some(p)) => outln!(
                "noise key:      {} (clients will see the same server)",
                p.display()
            ),
            _ => outln!(
            "noise key:      none given: clients would see a new server and have to log in again \
             (give --noise-key or --headscale-config)"
        ),
        }
        if let (Some(_), Some(p)) = (&derp, &derp_path) {
            outln!("derp key:       {}", p.display());
        }
        let mut policy_file = None;
        if hs.policy_mode == "file" {
            if let Some(p) = &hs.policy_path {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("policy.path {}: {e}", p.display()))?;
                policy_file = Some(text);
                outln!(
                    "policy file:    {} (copied into the database; policy.mode: database)",
                    p.display()
                );
            }
        }
        let translated = c
            .headscale_config
            .as_ref()
            .map(|_| translate_config(&hs.doc));
        if let Some((_, lost)) = &translated {
            for k in lost {
                outln!("config: not carried over: {k}");
            }
        }
        if !c.apply {
            outln!("Dry run: run again with --apply to import.");
            return Ok(());
        }

        let cfg = crate::cli::load_config(explicit)?;
        ensure_stopped(&cfg)?;
        // The policy to store: the database row, else the file Headscale used.
        let policy = imp.policy.clone().or(policy_file);
        if let Some(text) = &policy {
            // Checked against the imported topology before anything is written.
            if let Err(e) = check_policy(text, &imp) {
                return Err(format!("the Headscale policy does not load here: {e}"));
            }
        }
        if let Some(p) = &c.write_config {
            if Path::new(p).exists() {
                return Err(format!("{p} exists; --write-config writes a new file"));
            }
        }
        let store = Store::open(&cfg.database_path)
            .map_err(|e| format!("{}: {e}", cfg.database_path.display()))?;
        let snap = store.load().map_err(|e| e.to_string())?;
        if !(snap.users.is_empty() && snap.nodes.is_empty() && snap.keys.is_empty()) {
            return Err(format!(
                "{} already holds users, nodes or keys; migrate into a fresh data directory",
                cfg.database_path.display()
            ));
        }
        if let Some(k) = &noise {
            install_key(&cfg.noise_private_key_path, k)?;
        }
        if let Some(k) = &derp {
            install_key(&crate::control::derp_key_path(&cfg), k)?;
        }
        let mut ops: Vec<Op> = Vec::new();
        ops.extend(imp.users.iter().map(Op::PutUser));
        ops.extend(imp.keys.iter().map(Op::PutKey));
        ops.extend(imp.nodes.iter().map(Op::PutNode));
        if !imp.api_keys.is_empty() {
            let (k, v) =
                crate::state::apikey::import_table(&imp.api_keys).map_err(|e| e.to_string())?;
            ops.push(Op::PutMeta(k, v));
        }
        if let Some(text) = &policy {
            ops.push(Op::PutMeta(
                crate::control::policy::META_POLICY,
                text.as_bytes().to_vec(),
            ));
        }
        store.apply(&ops).map_err(|e| e.to_string())?;
        // Durable before we say so.
        store.flush().map_err(|e| e.to_string())?;
        drop(store);
        if let (Some(p), Some((yaml, _))) = (&c.write_config, &translated) {
            let mut yaml = yaml.clone();
            if policy.is_some() {
                yaml = yaml.replace("\n  mode: \"file\"\n", "\n  mode: \"database\"\n");
                if !yaml.contains("mode: \"database\"") {
                    yaml.push_str("policy:\n  mode: \"database\"\n");
                }
            }
            std::fs::write(p, yaml).map_err(|e| format!("{p}: {e}"))?;
            outln!("Wrote the translated config to {p}");
        }
        outln!(
            "Imported into {}.{} Stop Headscale for good, then start `tinyscale serve`.",
            cfg.database_path.display(),
            if policy.is_some() {
                " The policy is in the database: set policy.mode: database."
            } else {
                ""
            }
        );
        Ok(())
    }

    /// Parses and checks a policy against the imported nodes and users.
    fn check_policy(text: &str, imp: &Import) -> Result<(), String> {
        let topo = crate::control::policy::topology_of(imp.users.iter(), imp.nodes.iter());
        crate::policy::parse_and_check(text, &topo)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
#[cfg(feature = "migrate")]
pub use headscale_in::{migrate, translate_config};
