//! Who is on the subnet: hotkey → uid, from a file now and from the chain
//! later, behind one trait so the weight pipeline does not care which.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Why the metagraph could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetagraphError {
    /// The file could not be read.
    #[error("cannot read metagraph file '{path}': {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not `{"hotkeys": [...]}` or has too many entries.
    #[error("invalid metagraph file '{path}': {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The chain could not be asked.
    #[error("metagraph unavailable: {0}")]
    Unavailable(String),
}

/// One reading of the metagraph.
#[derive(Debug, Clone, PartialEq)]
pub struct MetagraphSnapshot {
    /// hotkey (ss58) → uid.
    pub uids: HashMap<String, u16>,
    /// When this reading was taken (or the file last changed).
    pub updated_at: DateTime<Utc>,
    /// The subnet's `min_allowed_weights` (1 when unknown).
    pub min_allowed_weights: usize,
}

impl MetagraphSnapshot {
    /// A snapshot from hotkeys listed in uid order.
    pub fn from_hotkeys(hotkeys: &[String], updated_at: DateTime<Utc>) -> Self {
        let uids = hotkeys
            .iter()
            .enumerate()
            .filter_map(|(i, h)| u16::try_from(i).ok().map(|uid| (h.clone(), uid)))
            .collect();
        Self {
            uids,
            updated_at,
            min_allowed_weights: 1,
        }
    }
}

/// A source of metagraph readings.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Metagraph: Send + Sync {
    /// The current hotkey → uid mapping.
    async fn snapshot(&self) -> Result<MetagraphSnapshot, MetagraphError>;
}

/// A metagraph read from `{"hotkeys": ["<ss58>", …]}`, where the position
/// is the uid (`BASE_METAGRAPH_FILE`). Re-read on every call, so an
/// operator can edit it without a restart.
#[derive(Debug, Clone)]
pub struct FileMetagraph {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    hotkeys: Vec<String>,
}

impl FileMetagraph {
    /// A metagraph backed by `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

#[async_trait]
impl Metagraph for FileMetagraph {
    async fn snapshot(&self) -> Result<MetagraphSnapshot, MetagraphError> {
        let path = self.path.display().to_string();
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| MetagraphError::Read {
                path: path.clone(),
                source,
            })?;
        let modified = tokio::fs::metadata(&self.path)
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(Utc::now);
        let body: FileBody = serde_json::from_str(&text).map_err(|e| MetagraphError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if body.hotkeys.len() > usize::from(u16::MAX) + 1 {
            return Err(MetagraphError::Invalid {
                path,
                reason: format!("{} hotkeys is more than 65536 uids", body.hotkeys.len()),
            });
        }
        Ok(MetagraphSnapshot::from_hotkeys(&body.hotkeys, modified))
    }
}

/// A fixed metagraph, for tests and embedding.
#[derive(Debug, Clone)]
pub struct StaticMetagraph(pub MetagraphSnapshot);

#[async_trait]
impl Metagraph for StaticMetagraph {
    async fn snapshot(&self) -> Result<MetagraphSnapshot, MetagraphError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_metagraph_positions_are_uids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        std::fs::write(&p, r#"{"hotkeys": ["burn", "a", "b"]}"#).unwrap();
        let s = FileMetagraph::new(&p).snapshot().await.unwrap();
        assert_eq!(s.uids.get("a"), Some(&1));
        assert_eq!(s.uids.get("b"), Some(&2));
        std::fs::write(&p, r#"{"hotkeys": "nope"}"#).unwrap();
        let e = FileMetagraph::new(&p)
            .snapshot()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.json"), "{e}");
        let e = FileMetagraph::new(dir.path().join("missing.json"))
            .snapshot()
            .await
            .unwrap_err();
        assert!(matches!(e, MetagraphError::Read { .. }));
    }
}
