//! Replacing a file whole, for `fmt --overwrite` and `state_file`.
//!
//! The new contents go to a temporary file created exclusively under a
//! random name in the target's directory (a name known in advance could be
//! a symlink someone planted, and writing through it would clobber whatever
//! it points at). The temporary file takes the target's mode and, when the
//! process may give files away (root), its owner, since site files hold
//! password hashes and must not turn world-readable. It is synced, then
//! renamed over the target, and the directory synced, so a crash leaves the
//! old file or the new one, never half of one.
//!
//! A path that is a symlink is written through: its target gets the new
//! contents and the link stays a link, as the operator set it up. Only a
//! link teebox's own user (or root) owns is followed, as Linux's
//! `protected_symlinks` does in shared directories: a link someone else
//! planted at the file's name must not redirect the write.

use std::ffi::OsString;
use std::fs::{File, Metadata, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file could not be replaced; the old contents are untouched.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step} {}: {source}", path.display())]
pub struct ReplaceError {
    step: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl ReplaceError {
    fn at(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| ReplaceError { step, path, source }
    }
}

/// Replaces the contents of `path` (or of the file it links to) with
/// `bytes`, atomically. A missing file is created, with the mode a plain
/// create would give it.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    let (target, existing) = resolve(path).map_err(ReplaceError::at("write", path))?;
    // A canonical path to a file always has a parent and a name.
    let dir = target.parent().unwrap_or(Path::new("/"));
    let mut prefix = OsString::from(".");
    prefix.push(target.file_name().unwrap_or_default());
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        // A new file gets what a plain create gives (0666 less the umask);
        // an existing file's exact mode is set below, once the owner is.
        .permissions(Permissions::from_mode(match existing {
            Some(_) => 0o600,
            None => 0o666,
        }))
        .tempfile_in(dir)
        .map_err(ReplaceError::at("create a temporary file in", dir))?;
    if let Some(meta) = &existing {
        keep_owner_and_mode(tmp.as_file(), meta)
            .map_err(ReplaceError::at("keep the owner and mode of", &target))?;
    }
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(ReplaceError::at("write a temporary file in", dir))?;
    tmp.persist(&target)
        .map_err(|e| ReplaceError::at("rename over", &target)(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ReplaceError::at("sync the directory", dir))
}

/// The file to replace, with a symlink followed, and its metadata when it
/// exists.
fn resolve(path: &Path) -> io::Result<(PathBuf, Option<Metadata>)> {
    if let Ok(link) = std::fs::symlink_metadata(path) {
        let ours = rustix::process::geteuid().as_raw();
        if link.file_type().is_symlink() && link.uid() != ours && link.uid() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "it is a symlink owned by another user (uid {}): only links of teebox's own user or root are followed",
                    link.uid()
                ),
            ));
        }
    }
    match std::fs::canonicalize(path) {
        Ok(target) => {
            let meta = std::fs::metadata(&target)?;
            if !meta.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is not a regular file",
                ));
            }
            Ok((target, Some(meta)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Replacing a dangling link by a file would quietly undo the
            // operator's link; creating its target could write anywhere.
            if is_dangling_link(path) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "it is a symlink to a file that does not exist",
                ));
            }
            let name = path.file_name().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "the path names no file")
            })?;
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Ok((std::fs::canonicalize(parent)?.join(name), None))
        }
        Err(e) => Err(e),
    }
}

/// Whether `path` is a symlink to nothing, which [`replace`] refuses to
/// write through (the site file's checks refuse such a `state_file` too).
pub fn is_dangling_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && std::fs::metadata(path).is_err()
}

fn keep_owner_and_mode(file: &File, meta: &Metadata) -> io::Result<()> {
    let now = file.metadata()?;
    if (now.uid(), now.gid()) != (meta.uid(), meta.gid()) {
        match std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid())) {
            Ok(()) => {}
            // Only root may give a file away; anyone else ends up owning
            // the new file, as with any editor that saves by renaming.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e),
        }
    }
    // After the chown, which clears set-user-ID and set-group-ID bits.
    file.set_permissions(Permissions::from_mode(meta.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_link_another_user_owns_is_not_followed() {
        if rustix::process::geteuid().as_raw() != 0 {
            return; // only root can make a link owned by someone else
        }
        let dir = scratch("foreign-link");
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, "keep").unwrap();
        let planted = dir.join("state.json");
        symlink(&victim, &planted).unwrap();
        std::os::unix::fs::lchown(&planted, Some(4242), Some(4242)).unwrap();
        let err = replace(&planted, b"state").expect_err("refused");
        assert!(
            err.to_string().contains("owned by another user (uid 4242)"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        // Root's own link is followed, as before.
        std::os::unix::fs::lchown(&planted, Some(0), Some(0)).unwrap();
        replace(&planted, b"state").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "state");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scratch(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("teebox-safe-write-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn replaces_keeping_the_mode_and_leaves_no_temporary_file() {
        let dir = scratch("mode");
        let file = dir.join("site.kdl");
        std::fs::write(&file, "old").unwrap();
        for wanted in [0o600, 0o640, 0o604] {
            std::fs::set_permissions(&file, Permissions::from_mode(wanted)).unwrap();
            replace(&file, b"new").unwrap();
            assert_eq!(std::fs::read(&file).unwrap(), b"new");
            assert_eq!(mode(&file), wanted);
        }
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_file_gets_the_mode_a_plain_create_gives() {
        let dir = scratch("new");
        let plain = dir.join("plain");
        std::fs::write(&plain, "").unwrap();
        let file = dir.join("state.json");
        replace(&file, b"{}").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"{}");
        assert_eq!(mode(&file), mode(&plain));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_through_a_symlink_and_keeps_the_link() {
        let dir = scratch("link");
        std::fs::create_dir(dir.join("real")).unwrap();
        let real = dir.join("real/site.kdl");
        std::fs::write(&real, "old").unwrap();
        std::fs::set_permissions(&real, Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("site.kdl");
        symlink("real/site.kdl", &link).unwrap();
        replace(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("real/site.kdl")
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        assert_eq!(mode(&real), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_dangling_link_and_a_directory() {
        let dir = scratch("refuse");
        let link = dir.join("gone.kdl");
        symlink("nowhere.kdl", &link).unwrap();
        let err = replace(&link, b"x").unwrap_err().to_string();
        assert!(
            err.contains("symlink to a file that does not exist"),
            "{err}"
        );
        assert!(!dir.join("nowhere.kdl").exists());
        let err = replace(&dir, b"x").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = replace(&dir.join("no/such/dir/f"), b"x").unwrap_err();
        assert!(err.to_string().starts_with("cannot write "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
