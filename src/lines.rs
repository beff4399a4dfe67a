//! Lines written off the request path: the access log, `record` and the
//! compare diff log all hand finished lines to a bounded queue that a
//! writer thread drains. A slow disk never holds a request; when the queue
//! is full the line is dropped and counted.
//!
//! A file may roll over at a size: `path` becomes `path.1`, `path.1`
//! becomes `path.2` and so on, keeping `keep` old files. Rolling happens
//! between lines, so no line is ever split across two files.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Where lines go.
pub enum Destination {
    Stdout,
    Stderr,
    File {
        path: PathBuf,
        /// Roll over before a line would take the file past this size.
        roll: Option<Roll>,
    },
}

/// How long the writer waits after a burst before looking for more: the
/// most a line waits for the disk, and the batching window under load.
const BATCH_NAP: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roll {
    pub size: u64,
    pub keep: usize,
}

#[derive(Clone)]
pub struct LineSink {
    tx: Sender<String>,
    dropped: Arc<AtomicU64>,
    what: &'static str,
}

impl LineSink {
    /// Opens the destination (a file is created if missing and appended
    /// to) and starts its writer thread. `what` names it in messages.
    pub fn open(destination: Destination, queue: usize, what: &'static str) -> io::Result<Self> {
        let mut out = Output::open(destination, what)?;
        let (tx, rx) = crossbeam_channel::bounded::<String>(queue);
        std::thread::Builder::new()
            .name(what.replace(' ', "-"))
            .spawn(move || out.drain(rx, what))?;
        Ok(LineSink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            what,
        })
    }

    /// Queues a line (with its `\n`) without waiting.
    pub fn write(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 10_000 == 0 {
                tracing::warn!(
                    dropped = n + 1,
                    "{} cannot keep up; lines dropped",
                    self.what
                );
            }
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Output {
    out: BufWriter<Box<dyn Write + Send>>,
    file: Option<FileState>,
}

struct FileState {
    path: PathBuf,
    size: u64,
    roll: Option<Roll>,
}

fn append(path: &Path, what: &str) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {what} {}: {e}", path.display()),
            )
        })
}

/// Opens the file a roll starts. teebox has just renamed its own file away
/// from the path, so anything there now was put there by someone else in
/// between: a symlink is not followed (it could point at any file the
/// process may write), while a regular file (another writer's, such as the
/// configuration a reload replaced) is appended to. The first open, at
/// start, does follow a symlink: the path is the operator's to set.
fn open_after_roll(path: &Path, what: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open {what} {} after rolling it (a symlink there is not followed): {e}",
                    path.display()
                ),
            )
        })
}

impl Output {
    fn open(destination: Destination, what: &str) -> io::Result<Self> {
        let (out, file): (Box<dyn Write + Send>, _) = match destination {
            Destination::Stdout => (Box::new(io::stdout()), None),
            Destination::Stderr => (Box::new(io::stderr()), None),
            Destination::File { path, roll } => {
                let file = append(&path, what)?;
                let size = file.metadata().map_or(0, |m| m.len());
                (Box::new(file), Some(FileState { path, size, roll }))
            }
        };
        Ok(Output {
            out: BufWriter::new(out),
            file,
        })
    }

    /// Blocks for the next line, then writes whatever else is queued
    /// before flushing: one flush per burst. After a burst it naps briefly
    /// before looking again, so under load lines are written in batches
    /// and the serving threads rarely have to wake this one (each wake-up
    /// costs a context switch on a busy core). Ends when every sender is
    /// gone.
    fn drain(&mut self, rx: Receiver<String>, what: &str) {
        while let Ok(line) = rx.recv() {
            let mut result = self.line(&line, what);
            loop {
                while let Ok(line) = rx.try_recv() {
                    result = result.and(self.line(&line, what));
                }
                if let Err(err) =
                    std::mem::replace(&mut result, Ok(())).and_then(|()| self.out.flush())
                {
                    tracing::error!(error = %err, "cannot write {what}");
                }
                std::thread::sleep(BATCH_NAP);
                if rx.is_empty() {
                    break;
                }
            }
        }
    }

    fn line(&mut self, line: &str, what: &str) -> io::Result<()> {
        let len = line.len() as u64;
        if let Some(file) = &mut self.file {
            if let Some(roll) = file.roll {
                if file.size > 0 && file.size + len > roll.size {
                    self.out.flush()?;
                    rotate(&file.path, roll.keep)?;
                    file.size = 0;
                    match open_after_roll(&file.path, what) {
                        Ok(next) => self.out = BufWriter::new(Box::new(next)),
                        // Lines keep going to the file just rolled (now
                        // `path.1`) rather than being lost; the next roll
                        // tries again.
                        Err(err) => tracing::error!(error = %err, "cannot start a new {what}"),
                    }
                }
            }
            file.size += len;
        }
        self.out.write_all(line.as_bytes())
    }
}

/// `path.{keep-1}` → `path.{keep}` (the oldest is overwritten), …,
/// `path` → `path.1`. With `keep` 0 the full file is simply removed.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let numbered = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_between_lines_and_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("teebox-lines-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let mut out = Output::open(
            Destination::File {
                path: path.clone(),
                roll: Some(Roll { size: 10, keep: 2 }),
            },
            "test",
        )
        .unwrap();
        for line in [
            "aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n", "ffff\n", "gggg\n",
        ] {
            out.line(line, "test").unwrap();
        }
        out.out.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "gggg\n");
        assert_eq!(read(&dir.join("out.jsonl.1")), "eeee\nffff\n");
        assert_eq!(read(&dir.join("out.jsonl.2")), "cccc\ndddd\n");
        assert!(!dir.join("out.jsonl.3").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_a_roll_starts_is_never_a_planted_symlink() {
        let dir = std::env::temp_dir().join(format!("teebox-lines-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.join("out.jsonl");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = open_after_roll(&path, "record file").unwrap_err();
        assert!(
            err.to_string().contains("a symlink there is not followed"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        // A regular file that appeared meanwhile is another writer's: appended to.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "theirs\n").unwrap();
        let mut file = open_after_roll(&path, "record file").unwrap();
        file.write_all(b"ours\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs\nours\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
