//! Free space of the data directory's file system, watched so that a filling disk refuses new
//! writes (v5 0x97 Quota exceeded) before the storage engine fails on it, while reads go on.
//! This module only measures; the broker decides what a low figure means.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

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

/// Measures the free space of `dir` every second and reports it to `report`, which decides what
/// it means; the watch ends when `report` returns false (its receiver is gone).
pub fn watch(dir: std::path::PathBuf, mut report: impl FnMut(u64) -> bool + Send + 'static) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(free) = free_bytes(&dir) else { continue };
            if !report(free) {
                return;
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
