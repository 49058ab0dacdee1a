//! The baseline: what every watched file was (type, size, mode, owner,
//! mtime and, when hashing, its content digest), so that a change can say
//! what it changed from, and a rescan after a lost event can say what
//! changed at all.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use collector_core::{FileOperation, FileType, FilesystemEvent, HashAlgorithm};
use daemoneye_hasher::HashEngine;

/// What one file was when last looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// Its kind.
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode & 0o7777`.
    pub permissions: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mtime` in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Content digest (regular files, when hashing), lowercase hex.
    pub hash: Option<String>,
}

impl FileState {
    /// From `lstat` metadata, without a hash.
    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        Self {
            file_type: file_type(m.mode()),
            size: m.size(),
            permissions: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            hash: None,
        }
    }

    /// Fills `e`'s type, size, mode and owner from this state.
    pub fn describe(&self, e: &mut FilesystemEvent) {
        e.file_type = Some(self.file_type);
        e.size = Some(self.size);
        e.permissions = Some(self.permissions);
        e.uid = Some(self.uid);
        e.gid = Some(self.gid);
    }
}

/// The [`FileType`] of an `st_mode`.
pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::Fifo,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::Regular,
    }
}

/// The files under the watched paths, and those that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    /// Every file and directory found, by path.
    pub files: BTreeMap<PathBuf, FileState>,
    /// Paths that could not be listed, examined or hashed, and why.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Roots that do not exist (watched all the same: they may be made).
    pub missing: Vec<PathBuf>,
}

/// Walks `roots` (not following symlinks, staying on each root's
/// filesystem) and, with an engine, hashes every regular file.
pub async fn scan(roots: &[PathBuf], engine: Option<&HashEngine>) -> Baseline {
    let walk_roots = roots.to_vec();
    let mut baseline = tokio::task::spawn_blocking(move || walk(&walk_roots))
        .await
        .unwrap_or_else(|e| Baseline {
            unreadable: vec![(PathBuf::from("/"), format!("the walk failed: {e}"))],
            ..Baseline::default()
        });
    if let Some(engine) = engine {
        let regular: Vec<PathBuf> = baseline
            .files
            .iter()
            .filter(|(_, state)| state.file_type == FileType::Regular)
            .map(|(path, _)| path.clone())
            .collect();
        let hashed = engine.hash_files(&regular).await;
        for (path, result) in regular.into_iter().zip(hashed) {
            match result
                .map_err(|e| e.to_string())
                .and_then(|o| first_digest(&o))
            {
                Ok(h) => {
                    if let Some(state) = baseline.files.get_mut(&path) {
                        state.hash = Some(h);
                    }
                }
                Err(e) => baseline.unreadable.push((path, e)),
            }
        }
    }
    baseline
}

/// The first configured digest of a hash.
fn first_digest(outcome: &daemoneye_hasher::HashOutcome) -> Result<String, String> {
    outcome
        .digests
        .first()
        .map(|d| d.hex.clone())
        .ok_or_else(|| "no digest".to_owned())
}

fn walk(roots: &[PathBuf]) -> Baseline {
    let mut b = Baseline::default();
    for root in roots {
        let meta = match std::fs::symlink_metadata(root) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                b.missing.push(root.clone());
                continue;
            }
            Err(e) => {
                b.unreadable.push((root.clone(), e.to_string()));
                continue;
            }
        };
        let dev = meta.dev();
        let mut stack = vec![(root.clone(), meta)];
        while let Some((path, meta)) = stack.pop() {
            let is_dir = meta.is_dir();
            b.files
                .insert(path.clone(), FileState::from_metadata(&meta));
            if !is_dir || meta.dev() != dev {
                continue;
            }
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) => {
                    b.unreadable.push((path, e.to_string()));
                    continue;
                }
            };
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        b.unreadable.push((path.clone(), e.to_string()));
                        continue;
                    }
                };
                let child = entry.path();
                match std::fs::symlink_metadata(&child) {
                    Ok(m) => stack.push((child, m)),
                    // Gone between the listing and the look: not an error.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => b.unreadable.push((child, e.to_string())),
                }
            }
        }
    }
    b
}

/// The events that turn `old` into `new` (after a rescan): a
/// [`Create`](FileOperation::Create) for each new path, a
/// [`Delete`](FileOperation::Delete) for each one gone, a
/// [`Modify`](FileOperation::Modify) for changed content (size, mtime or
/// hash) and an [`Attrib`](FileOperation::Attrib) for a changed mode or
/// owner; none has a pid (what did it is unknown).
pub fn diff(
    old: &BTreeMap<PathBuf, FileState>,
    new: &BTreeMap<PathBuf, FileState>,
    algorithm: Option<HashAlgorithm>,
    now: SystemTime,
) -> Vec<FilesystemEvent> {
    let mut out = Vec::new();
    let event = |path: &Path, op, state: &FileState, previous: Option<&FileState>| {
        let mut e = FilesystemEvent::new(path.to_string_lossy(), op, now);
        state.describe(&mut e);
        e.file_hash.clone_from(&state.hash);
        e.previous_hash = previous.and_then(|p| p.hash.clone());
        e.previous_permissions = previous.map(|p| p.permissions);
        if e.file_hash.is_some() || e.previous_hash.is_some() {
            e.hash_algorithm = algorithm;
        }
        e
    };
    for (path, state) in new {
        match old.get(path) {
            None => out.push(event(path, FileOperation::Create, state, None)),
            Some(before) => {
                if before.size != state.size
                    || before.mtime_ns != state.mtime_ns
                    || before.hash != state.hash
                    || before.file_type != state.file_type
                {
                    out.push(event(path, FileOperation::Modify, state, Some(before)));
                }
                if (before.permissions, before.uid, before.gid)
                    != (state.permissions, state.uid, state.gid)
                {
                    out.push(event(path, FileOperation::Attrib, state, Some(before)));
                }
            }
        }
    }
    for (path, before) in old {
        if !new.contains_key(path) {
            let mut e = event(path, FileOperation::Delete, before, Some(before));
            e.file_hash = None;
            if e.previous_hash.is_none() {
                e.hash_algorithm = None;
            }
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_scan_records_files_hashes_them_and_reports_what_it_could_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("a"), b"abc").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("a", root.join("sub/link")).unwrap();
        let engine = HashEngine::new(daemoneye_hasher::HasherConfig::default()).unwrap();
        let missing = root.join("missing");
        let b = scan(&[root.clone(), missing.clone()], Some(&engine)).await;
        let a = &b.files[&root.join("a")];
        assert_eq!((a.file_type, a.size), (FileType::Regular, 3));
        assert_eq!(
            a.hash.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(b.files[&root.join("sub")].file_type, FileType::Directory);
        assert_eq!(b.files[&root.join("sub/link")].file_type, FileType::Symlink);
        assert_eq!(b.files[&root.join("sub/link")].hash, None);
        assert_eq!(b.unreadable, []);
        assert_eq!(b.missing, [missing]);
    }

    #[tokio::test]
    async fn the_diff_of_two_scans_names_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("kept"), b"1").unwrap();
        std::fs::write(root.join("gone"), b"1").unwrap();
        std::fs::write(root.join("chmod"), b"1").unwrap();
        let before = scan(std::slice::from_ref(&root), None).await.files;
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::write(root.join("new"), b"1").unwrap();
        std::fs::write(root.join("kept"), b"longer").unwrap();
        std::fs::set_permissions(
            root.join("chmod"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
        let after = scan(std::slice::from_ref(&root), None).await.files;
        let mut got: Vec<(String, FileOperation)> = diff(&before, &after, None, SystemTime::now())
            .into_iter()
            .filter(|e| e.path != root.to_string_lossy())
            .map(|e| (e.path, e.operation))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let p = |n: &str| root.join(n).to_string_lossy().into_owned();
        assert_eq!(
            got,
            [
                (p("chmod"), FileOperation::Attrib),
                (p("gone"), FileOperation::Delete),
                (p("kept"), FileOperation::Modify),
                (p("new"), FileOperation::Create),
            ]
        );
    }
}
