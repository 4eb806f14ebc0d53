//! Secret files on disk: the Noise and DERP private keys, the TLS key and
//! the database. They are written whole or not at all (temporary file,
//! fsync, rename, fsync of the directory), so a crash or power cut while
//! one is being created never leaves an empty file that would stop every
//! later start; and existing ones that group or others can read are made
//! owner-only (or refused) before we use them, with a message saying so.

use std::fs::File;
use std::io::{self, Error, ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `data` to `path` (mode 0600) atomically: readers see either the
/// old file or the whole new one.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover from a crash is ours to overwrite; it is never read.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable only once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What to do with an existing secret file that group or others can reach.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Loose {
    /// A file tinyscale created itself: set it back to 0600, with a warning.
    Fix,
    /// A file the operator manages (`tls_key_path`): refuse to start, since
    /// changing its mode could break whatever else uses it.
    Refuse,
}

/// Checks the mode of an existing secret file (following a symlink to the
/// file it names, through one open descriptor so a swap in between cannot
/// redirect the chmod). Missing files are fine: the caller creates them.
pub fn check_private(path: &Path, what: &str, loose: Loose) -> io::Result<()> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mode = f.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    match loose {
        Loose::Refuse => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{what} {} has mode {mode:03o}: group and others can read it; \
                 run `chmod 600 {}` and start again",
                path.display(),
                path.display()
            ),
        )),
        Loose::Fix => {
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!(
                            "{what} {} has mode {mode:03o} (group and others can read it) \
                             and cannot be made owner-only: {e}",
                            path.display()
                        ),
                    )
                })?;
            log::warn!(
                "{what} {} had mode {mode:03o}, so group and others could read it; \
                 set to {:03o}. If it was copied elsewhere, consider it exposed",
                path.display(),
                mode & 0o700
            );
            Ok(())
        }
    }
}

/// Reads a `privkey:<hex>` file, or creates one (mode 0600, atomically) on
/// first start. An empty or damaged file is an error that says what to do,
/// never silently replaced: the key is the server's identity.
pub fn load_or_create_key(path: &Path) -> io::Result<[u8; 32]> {
    check_private(path, "key file", Loose::Fix)?;
    match std::fs::read(path) {
        Ok(b) => parse_key(&b).ok_or_else(|| {
            let what = if b.iter().all(|c| c.is_ascii_whitespace()) {
                "is empty"
            } else {
                "is not a private key (want privkey:<64 hex>)"
            };
            Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{what}; restore it from a backup, or delete it to generate a new one \
                     (clients then see a new server key)"
                ),
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                create_private_dir(dir)?;
            }
            let key = crate::keys::random32();
            write_atomic(
                path,
                format!("privkey:{}\n", crate::keys::to_hex(&key)).as_bytes(),
            )?;
            log::info!("generated a new key in {}", path.display());
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn parse_key(b: &[u8]) -> Option<[u8; 32]> {
    let s = std::str::from_utf8(b).ok()?.trim();
    crate::keys::from_hex::<32>(s.strip_prefix("privkey:").unwrap_or(s))
}

/// Creates `dir` (and parents) readable by the owner only.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let r = crate::keys::random32();
        let d = std::env::temp_dir().join(format!(
            "tinyscale-secret-{name}-{}-{}",
            std::process::id(),
            crate::keys::to_hex(&r[..6])
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_is_created_owner_only_and_read_back() {
        let d = dir("create");
        let p = d.join("k.key");
        let k = load_or_create_key(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(load_or_create_key(&p).unwrap(), k);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn empty_or_corrupt_key_is_a_clear_error_and_left_alone() {
        let d = dir("empty");
        let p = d.join("k.key");
        for (content, says) in [
            (&b""[..], "is empty"),
            (b"privkey:12zz", "not a private key"),
        ] {
            std::fs::write(&p, content).unwrap();
            let e = load_or_create_key(&p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidData);
            assert!(e.to_string().contains(says), "{e}");
            assert!(e.to_string().contains("delete it"), "{e}");
            assert_eq!(std::fs::read(&p).unwrap(), content, "the file was changed");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_crash_before_rename_leaves_no_key_and_the_next_start_creates_one() {
        let d = dir("crash");
        let p = d.join("k.key");
        // What a crash between create and write used to leave, under the
        // temporary name now: it must not block the start.
        std::fs::write(d.join(".k.key.tmp"), b"").unwrap();
        let k = load_or_create_key(&p).unwrap();
        assert_eq!(parse_key(&std::fs::read(&p).unwrap()), Some(k));
        assert!(!d.join(".k.key.tmp").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn loose_key_is_fixed_and_operator_file_refused() {
        let d = dir("loose");
        let p = d.join("k.key");
        let k = load_or_create_key(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_key(&p).unwrap(), k);
        assert_eq!(mode(&p), 0o600);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_private(&p, "tls_key_path", Loose::Refuse).unwrap_err();
        assert!(e.to_string().contains("mode 640"), "{e}");
        assert_eq!(mode(&p), 0o640);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn write_atomic_replaces_whole() {
        let d = dir("atomic");
        let p = d.join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two two");
        assert_eq!(mode(&p), 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }
}
