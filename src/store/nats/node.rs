//! This node's id in the cluster: configured, or generated once and kept in the data
//! directory so that it survives restarts and differs between nodes on one host.

use super::StoreError;

/// File in the data directory that keeps a generated node id across restarts.
const NODE_ID_FILE: &str = "node-id";

/// This node's id: `configured` when set; else the one kept in `data_dir` (`node-id`), made
/// once from the host name and a random suffix; without a data directory (memory backend), a
/// new one per start.
///
/// # Errors
/// [`StoreError::Io`] when the id file cannot be read or written.
pub fn node_id(configured: Option<&str>, data_dir: Option<&std::path::Path>) -> Result<String, StoreError> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let io = |path: &std::path::Path, e: std::io::Error| StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let Some(dir) = data_dir else { return Ok(generated_id()) };
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if crate::config::is_node_token(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                message: "not a node id".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path, e)),
    }
    let id = generated_id();
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    std::fs::write(&path, format!("{id}\n")).map_err(|e| io(&path, e))?;
    Ok(id)
}

/// The host name (its `[A-Za-z0-9_-]` characters, at most 40) and 8 random hex digits.
fn generated_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    if host.is_empty() {
        host.push_str("node");
    }
    format!("{host}-{:08x}", rand::random::<u32>())
}
