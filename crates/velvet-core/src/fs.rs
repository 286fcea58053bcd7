//! Crash-safe file writes: a temp file beside the target, fsync, rename, fsync of the directory.
//! A reader sees the old file or the new one, never a torn one, and a crash loses neither.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically, creating it with `mode` (an existing file's mode is
/// replaced by `mode` too, so a secret file never stays world-readable).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_as(path, bytes, mode, None)
}

/// Replaces a file someone else may own: an existing file keeps its owner, group and mode
/// (less any access for others: it holds a secret); a new one gets `new_mode`.
pub fn replace_keeping_owner(path: &Path, bytes: &[u8], new_mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => write_atomic_as(path, bytes, m.mode() & 0o770, Some((m.uid(), m.gid()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomic_as(path, bytes, new_mode, None)
        }
        Err(e) => Err(e),
    }
}

/// Removes temp files that a crash left beside `path` (they may hold a secret).
pub fn remove_stale_temps(path: &Path) -> std::io::Result<usize> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(0);
    };
    let prefix = format!(".{name}.");
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let ours = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .is_some_and(|mid| mid.len() == 12 && mid.bytes().all(|b| b.is_ascii_hexdigit()));
        if ours {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn write_atomic_as(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // The umask may have narrowed `mode`; set exactly what was asked.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replacing_keeps_the_mode_less_others_and_stale_temps_go() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.env");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_keeping_owner(&p, b"new", 0o600).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let fresh = dir.path().join("fresh.env");
        replace_keeping_owner(&fresh, b"x", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for leftover in [".app.env.0123456789ab.tmp", ".app.env.deadbeef0000.tmp"] {
            std::fs::write(dir.path().join(leftover), "secret").unwrap();
        }
        std::fs::write(dir.path().join(".app.env.notours.tmp"), "keep").unwrap();
        assert_eq!(remove_stale_temps(&p).unwrap(), 2);
        assert!(dir.path().join(".app.env.notours.tmp").exists());
    }
}
