//! The one-time bootstrap token: the only credential that creates the first admin key over
//! HTTP. While no admin key exists, the broker makes a random token at start and writes it to
//! `<data_dir>/bootstrap-token` (mode 0600, so only the broker's user on that host reads it).
//! A `POST /admin/keys` for an admin key carrying `Authorization: Bootstrap <token>` takes it;
//! once that key is stored the token is consumed: forgotten and its file deleted.
//!
//! Taking is atomic: two requests with the token race for one [`Ticket`]; a ticket whose key
//! could not be created (bad spec, store failure) puts the token back when dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use subtle::ConstantTimeEq;

/// The token file's name inside the data directory.
pub const TOKEN_FILE: &str = "bootstrap-token";

/// The token file of the broker whose data directory is `data_dir`.
pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// A token in force and its file.
#[derive(Debug)]
struct Armed {
    token: String,
    file: PathBuf,
}

/// The bootstrap token, when one is in force.
#[derive(Debug, Default)]
pub struct Bootstrap {
    armed: Mutex<Option<Armed>>,
}

impl Bootstrap {
    /// Makes a new token and writes it to [`token_file`] of `data_dir` (replacing an old
    /// one), readable by the owner only. Returns the file's path.
    ///
    /// # Errors
    /// The I/O error of writing the file; then no token is in force.
    pub fn arm(&self, data_dir: &Path) -> std::io::Result<PathBuf> {
        let file = token_file(data_dir);
        remove(&file)?;
        let token = super::key::new_secret();
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file)?;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()?;
        *self.armed.lock() = Some(Armed { token, file: file.clone() });
        Ok(file)
    }

    /// Deletes a token file left in `data_dir` (an admin key exists, so it is void).
    ///
    /// # Errors
    /// The I/O error of deleting it.
    pub fn remove_stale(data_dir: &Path) -> std::io::Result<()> {
        remove(&token_file(data_dir))
    }

    /// True when a token is in force.
    pub fn armed(&self) -> bool {
        self.armed.lock().is_some()
    }

    /// Takes the token when `presented` is it (compared in constant time).
    pub fn take(&self, presented: &str) -> Option<Ticket<'_>> {
        let mut armed = self.armed.lock();
        let ok = armed.as_ref().is_some_and(|a| bool::from(a.token.as_bytes().ct_eq(presented.as_bytes())));
        ok.then(|| Ticket { owner: self, armed: armed.take() })
    }

    /// Forgets the token and deletes its file (an admin key exists now).
    pub fn consume(&self) {
        if let Some(a) = self.armed.lock().take() {
            forget(&a);
        }
    }
}

/// The token, taken by one request; dropped unconsumed, it returns to its [`Bootstrap`].
#[derive(Debug)]
pub struct Ticket<'a> {
    owner: &'a Bootstrap,
    armed: Option<Armed>,
}

impl Ticket<'_> {
    /// The first admin key exists: the token is gone for good, its file deleted.
    pub fn consume(mut self) {
        if let Some(a) = self.armed.take() {
            forget(&a);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.armed.take() {
            *self.owner.armed.lock() = Some(a);
        }
    }
}

fn forget(a: &Armed) {
    match remove(&a.file) {
        Ok(()) => tracing::info!(file = %a.file.display(), "bootstrap token consumed; its file is deleted"),
        Err(e) => {
            tracing::warn!(file = %a.file.display(), error = %e, "bootstrap token consumed but its file remains; delete it")
        }
    }
}

fn remove(file: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn token_works_once_and_returns_when_unused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Bootstrap::default();
        let file = b.arm(dir.path()).expect("arm");
        let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = std::fs::read_to_string(&file).expect("read").trim().to_string();
        assert!(b.take("wrong").is_none());
        let t = b.take(&token).expect("right token");
        assert!(b.take(&token).is_none(), "taken: a second request cannot use it meanwhile");
        drop(t);
        b.take(&token).expect("back after a failed creation").consume();
        assert!(b.take(&token).is_none() && !b.armed());
        assert!(!file.exists(), "file deleted");
    }
}
