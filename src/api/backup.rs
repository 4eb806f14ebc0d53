//! `POST /api/v1/backup {"path", "withKeys"}` on the admin socket only (the
//! server writes the file itself): a consistent copy of the running
//! server's database (`tinyscale backup`). The snapshot is one redb
//! read transaction begun under the state lock, so it holds every change
//! acknowledged before the request; the copy itself runs without the lock,
//! and registrations go on meanwhile.

use crate::control::Server;
use crate::state::store::{write_backup, META_BACKUP_DERP_KEY, META_BACKUP_NOISE_KEY};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupRequest {
    pub path: String,
    #[serde(default)]
    pub with_keys: bool,
}

/// The request as the HTTP layer hands it over.
pub fn handle(server: &Server, body: &[u8]) -> super::Reply {
    let r: BackupRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return super::error(400, format!("invalid JSON body: {e}")),
    };
    match run(server, &r) {
        Ok(v) => super::Reply {
            status: 200,
            body: v.to_string(),
        },
        Err(e) => super::error(400, e),
    }
}

/// Writes the backup; the path must be absolute and must not exist.
pub fn run(server: &Server, r: &BackupRequest) -> Result<serde_json::Value, String> {
    let dest = Path::new(&r.path);
    if !dest.is_absolute() {
        return Err(format!("backup path {:?} is not absolute", r.path));
    }
    let snap = server
        .state()
        .store
        .begin_backup()
        .map_err(|e| e.to_string())?;
    let mut extra = Vec::new();
    if r.with_keys {
        extra.push((META_BACKUP_NOISE_KEY, server.noise_private.to_vec()));
        let derp = crate::control::derp_key_path(&server.cfg);
        if let Ok(s) = std::fs::read_to_string(&derp) {
            if let Some(k) = crate::control::parse_key_file(&s) {
                extra.push((META_BACKUP_DERP_KEY, k.to_vec()));
            }
        }
    }
    write_backup(&snap, dest, &extra).map_err(|e| e.to_string())?;
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    log::info!("backup written to {} ({bytes} bytes)", dest.display());
    Ok(serde_json::json!({ "path": r.path, "bytes": bytes, "withKeys": r.with_keys }))
}
