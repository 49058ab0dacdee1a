//! Files that hold a secret (a webhook's `Authorization` header, a NATS
//! creds file): read once, as root, before privileges are dropped; refused
//! when others may read them, and bounded in size.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// The largest secret file read.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret file was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// It cannot be opened or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Its group or others may read or write it.
    #[error("mode {0:o} lets others read it; chmod 600")]
    Shared(u32),
    /// It is larger than [`MAX_SECRET_FILE_BYTES`].
    #[error("larger than {} KiB", MAX_SECRET_FILE_BYTES / 1024)]
    TooLarge,
    /// It is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
}

/// The text of the secret file `path`: refused when its mode gives its
/// group or others any access, or when it is larger than
/// [`MAX_SECRET_FILE_BYTES`].
///
/// # Errors
/// [`SecretFileError`].
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let file = std::fs::File::open(path)?;
    let mode = file.metadata()?.mode();
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Shared(mode & 0o777));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| SecretFileError::NotText)
}

/// A secret's text, read once: never printed (its `Debug` is `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret `text`.
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The secret's text, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_private_file_is_read_a_shared_or_huge_one_refused() {
        let dir = std::env::temp_dir().join(format!("daemoneye-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, "token").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), "token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretFileError::Shared(0o640))
        ));
        std::fs::write(&path, vec![b'a'; 64 * 1024 + 1]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretFileError::TooLarge)
        ));
        assert!(matches!(
            read_secret_file(&dir.join("missing")),
            Err(SecretFileError::Io(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(format!("{:?}", Secret::new("token".into())), "***");
    }
}
