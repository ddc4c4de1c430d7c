//! Free space of the data directory's file system, watched so that a filling disk refuses new
//! writes (v5 0x97 Quota exceeded) before the storage engine fails on it, while reads go on.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;

/// Bytes available to unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a struct we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Checks the free space of `dir` every second and tells the broker when it falls below (or
/// rises back above) `min_free`. Logs each change once.
pub fn watch(broker: Arc<Broker>, dir: std::path::PathBuf, min_free: u64) {
    if min_free == 0 {
        return;
    }
    let weak = Arc::downgrade(&broker);
    drop(broker);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(broker) = weak.upgrade() else { return };
            let Some(free) = free_bytes(&dir) else { continue };
            let full = free < min_free;
            if full != broker.disk_full() {
                if full {
                    tracing::warn!(dir = %dir.display(), free, min_free = min_free,
                        "data directory almost full: refusing messages that would be stored (0x97) until space is freed");
                } else {
                    tracing::info!(dir = %dir.display(), free, "data directory has space again: accepting messages");
                }
                broker.set_disk_full(full);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_bytes_of_the_temp_dir() {
        let free = super::free_bytes(&std::env::temp_dir()).expect("statvfs works");
        assert!(free > 0);
        assert!(super::free_bytes(std::path::Path::new("/no/such/dir")).is_none());
    }
}
