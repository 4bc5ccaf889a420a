//! `MANIFEST.sha256`: the checksum of every bundle file, in `sha256sum` format.
//!
//! Verification reads each file once and hands the verified bytes back, so what is parsed and
//! loaded afterwards is exactly what was checked: a file rewritten in between cannot slip in.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// The manifest's own name inside a bundle.
pub const MANIFEST: &str = "MANIFEST.sha256";

/// Files every bundle must list.
pub const REQUIRED: [&str; 6] =
    ["model.onnx", "feature_schema.yaml", "config.yaml", "evaluation.json", "golden.jsonl", "version.txt"];

/// Why a manifest does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: expected `<sha256>  <file name>`")]
    Syntax { line: usize },
    #[error("{0} is not listed")]
    Unlisted(&'static str),
    #[error("{0} is listed twice")]
    Duplicate(String),
    #[error("{name}: sha256 is {actual}, manifest says {expected}")]
    Mismatch { name: String, expected: String, actual: String },
}

/// Verified file contents by name, and the manifest's own sha256 (the bundle's identity).
#[derive(Debug)]
pub struct Verified {
    pub files: HashMap<String, Vec<u8>>,
    pub manifest_sha256: String,
}

/// Checks every listed file against its checksum and that the required files are listed.
pub fn verify(dir: &Path) -> Result<Verified, ManifestError> {
    let read =
        |name: &str| read_file(&dir.join(name)).map_err(|source| ManifestError::Read { name: name.to_owned(), source });
    let manifest = read(MANIFEST)?;
    let manifest_sha256 = sha256_hex(&manifest);
    let text = String::from_utf8_lossy(&manifest);
    let mut files = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (expected, name) = line.split_once("  ").ok_or(ManifestError::Syntax { line: i + 1 })?;
        let plain_name = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        let hex_digest = expected.len() == 64 && expected.bytes().all(|b| b.is_ascii_hexdigit());
        if !plain_name || !hex_digest {
            return Err(ManifestError::Syntax { line: i + 1 });
        }
        let bytes = read(name)?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(ManifestError::Mismatch { name: name.to_owned(), expected: expected.to_owned(), actual });
        }
        if files.insert(name.to_owned(), bytes).is_some() {
            return Err(ManifestError::Duplicate(name.to_owned()));
        }
    }
    if let Some(missing) = REQUIRED.iter().find(|r| !files.contains_key(**r)) {
        return Err(ManifestError::Unlisted(missing));
    }
    Ok(Verified { files, manifest_sha256 })
}

/// What a candidate version directory is: its canonical path and its manifest's sha256.
///
/// Reloads compare identities, never timestamps, so a rollback to an older directory is a
/// change like any other, and a bundle repaired in place (new manifest) is a new candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub path: PathBuf,
    /// None when the manifest cannot be read: the full load reports why.
    pub manifest_sha256: Option<String>,
}

impl Identity {
    /// Resolves `link` (a `current` link or a version directory) and hashes the manifest it
    /// holds (small: one line per file).
    pub fn of(link: &Path) -> std::io::Result<Identity> {
        let path = link.canonicalize()?;
        if !path.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        let manifest_sha256 = read_file(&path.join(MANIFEST)).ok().map(|bytes| sha256_hex(&bytes));
        Ok(Identity { path, manifest_sha256 })
    }
}

/// Reads a bundle file, refusing anything but a regular file: opening a FIFO for reading would
/// block the loader until some writer came along, and a directory has no bytes to check. The
/// open does not block (O_NONBLOCK), and the type is checked on the opened file, so a file
/// swapped between a check and the open cannot slip through.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes).iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
