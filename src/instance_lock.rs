//! One process per data directory: two instances on the same SQLite file
//! would each keep their own in-memory map table, sessions and retained
//! messages and overwrite each other's rows. The lock is an advisory
//! `flock` on `{data_dir}/mapcast.lock`, held by an open file for the life
//! of the process; the kernel releases it however the process ends, so a
//! `kill -9` never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub const LOCK_FILE: &str = "mapcast.lock";

/// Held while the value lives.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Take the lock of `data_dir` (which must exist), or fail at once
    /// naming the process that holds it.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by =
                    if holder.is_empty() { String::new() } else { format!(" (process {holder})") };
                bail!(
                    "another mapcast instance{by} is running on the data directory {}: \
                     only one may use it at a time (lock file {})",
                    data_dir.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e)
                    .with_context(|| format!("cannot lock the lock file {}", path.display()));
            }
        }
        // For the message of whoever tries next; the lock, not this text,
        // is what excludes them.
        let _ = file.set_len(0).and_then(|()| file.rewind());
        let _ = write!(file, "{}", std::process::id()).and_then(|()| file.flush());
        tracing::debug!(lock.path = %path.display(), "data directory locked");
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::acquire(dir.path()).unwrap();

        let err = InstanceLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another mapcast instance"), "{err}");
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");

        drop(first);
        InstanceLock::acquire(dir.path()).expect("released with the first");
    }
}
