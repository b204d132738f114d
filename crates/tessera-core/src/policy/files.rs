//! Which files make a policy set: one `.cedar` file, or every `.cedar` file
//! directly in a directory, in name order. Local reads only.

use std::path::Path;

use super::PolicyLoadError;

/// Most `.cedar` files in a policy directory.
pub const MAX_POLICY_FILES: usize = 256;
/// Largest policy file, in bytes.
pub const MAX_POLICY_FILE_BYTES: u64 = 1024 * 1024;

/// One policy file's name (as shown in errors and ids) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// The path as given (a directory's files: `dir/name.cedar`).
    pub name: String,
    /// Its text.
    pub text: String,
}

impl PolicyFile {
    /// A file from memory.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// Reads `path`: a `.cedar` file, or a directory whose `.cedar` files (not
/// those of subdirectories; hidden files skipped) are read in name order.
pub fn read_policy_files(path: &Path) -> Result<Vec<PolicyFile>, PolicyLoadError> {
    let shown = path.display().to_string();
    let read_err = |p: &Path, e: std::io::Error| PolicyLoadError::Read {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(path, e))?;
    let mut paths = Vec::new();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| read_err(path, e))? {
            let entry = entry.map_err(|e| read_err(path, e))?;
            let p = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || p.extension().is_none_or(|ext| ext != "cedar") {
                continue;
            }
            if std::fs::metadata(&p).map_err(|e| read_err(&p, e))?.is_file() {
                paths.push(p);
            }
            if paths.len() > MAX_POLICY_FILES {
                return Err(PolicyLoadError::TooLarge {
                    path: shown,
                    message: format!("more than {MAX_POLICY_FILES} .cedar files"),
                });
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyLoadError::Empty { path: shown });
        }
    } else {
        paths.push(path.to_owned());
    }
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let len = std::fs::metadata(&p).map_err(|e| read_err(&p, e))?.len();
        if len > MAX_POLICY_FILE_BYTES {
            return Err(PolicyLoadError::TooLarge {
                path: p.display().to_string(),
                message: format!("larger than {MAX_POLICY_FILE_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
        files.push(PolicyFile {
            name: p.display().to_string(),
            text,
        });
    }
    Ok(files)
}
