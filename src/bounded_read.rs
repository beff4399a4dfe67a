//! Reading the files a site file names (and the site file itself) with a
//! bound on their size and on how long opening them may block.
//!
//! A wrong path can name a device or a FIFO: `/dev/zero` read whole takes
//! all memory, and a FIFO nobody writes to blocks its reader for ever (a
//! reload would then never end). Files teebox only reads at load (users,
//! state, certificates) must be regular files; the site file may also come
//! from a pipe (`teebox validate /dev/stdin`), but never past its limit.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest site file teebox reads: 60,000 routes take about 6 MiB.
pub const MAX_SITE_FILE: u64 = 64 << 20;

/// The largest file a site file names that teebox reads whole (a CA
/// bundle, a `state_file`): a system CA bundle is about 200 KiB.
pub const MAX_NAMED_FILE: u64 = 16 << 20;

/// What a file may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only a regular file; opening never waits (a FIFO is refused).
    Regular,
    /// Anything that can be read, a pipe included (the site file).
    Any,
}

/// Reads `path` whole, refusing it past `limit` bytes (the error names the
/// limit) or, for [`Kind::Regular`], when it is not a regular file.
pub fn read(path: &Path, limit: u64, kind: Kind) -> io::Result<Vec<u8>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if kind == Kind::Regular {
        // Opening a FIFO for reading waits for a writer, unless non-blocking.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if kind == Kind::Regular && !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the limit of {} MiB", limit >> 20),
        ));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64, kind: Kind) -> io::Result<String> {
    String::from_utf8(read(path, limit, kind)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_where_a_regular_file_is_wanted() {
        let dir = std::env::temp_dir().join(format!("teebox-bounded-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("users");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = read(&fifo, 10, Kind::Regular).expect_err("a FIFO");
        assert_eq!(err.to_string(), "not a regular file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_device_is_read_only_up_to_the_limit() {
        let err = read(Path::new("/dev/zero"), 1 << 20, Kind::Any).expect_err("endless");
        assert_eq!(err.to_string(), "larger than the limit of 1 MiB");
        let err = read(Path::new("/dev/zero"), 1 << 20, Kind::Regular).expect_err("a device");
        assert_eq!(err.to_string(), "not a regular file");
    }
}
