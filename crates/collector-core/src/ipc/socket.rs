//! Creating the listening socket safely: a private directory, owner-only
//! permissions, stale sockets replaced, live ones left alone.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use crate::ipc::IpcError;

/// The socket we created, so that shutdown removes it only if it is still
/// ours.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    pub(crate) path: PathBuf,
    dev: u64,
    ino: u64,
}

fn setup(path: &Path) -> impl FnOnce(std::io::Error) -> IpcError + '_ {
    move |source| IpcError::Setup {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` 0700 when missing; refuses one that is not a directory, is
/// owned by another user (other than root), or is writable by group or
/// others.
fn prepare_dir(dir: &Path) -> Result<(), IpcError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(setup(dir))?;
            // `mode` is filtered by the umask; make sure of 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(setup(dir))?;
            Ok(())
        }
        Err(e) => Err(setup(dir)(e)),
        Ok(meta) => {
            let unsafe_dir = |reason| IpcError::UnsafeDirectory {
                path: dir.to_owned(),
                reason,
            };
            if !meta.is_dir() {
                return Err(unsafe_dir("not a directory"));
            }
            let me = nix::unistd::geteuid().as_raw();
            if meta.uid() != me && meta.uid() != 0 {
                return Err(unsafe_dir("owned by another user"));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(unsafe_dir("writable by group or others"));
            }
            Ok(())
        }
    }
}

/// Binds `path`: its directory prepared, a stale socket (nobody listening)
/// replaced, the socket file made 0600, or 0660 when `group` (the peer the
/// socket is shared with reaches it through the group of a setgid
/// directory).
pub(crate) async fn bind(
    path: &Path,
    group: bool,
) -> Result<(UnixListener, BoundSocket), IpcError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    prepare_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(setup(path)(e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(IpcError::NotASocket {
                path: path.to_owned(),
            })
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(IpcError::SocketInUse {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing stale ipc socket");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(setup(path)(e)),
                    _ => {}
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(setup(path)(e)),
        },
    }
    let listener = UnixListener::bind(path).map_err(setup(path))?;
    // The directory is private, so nobody else can reach the socket in the
    // moment between bind and chmod.
    let mode = if group { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(setup(path))?;
    let meta = std::fs::symlink_metadata(path).map_err(setup(path))?;
    Ok((
        listener,
        BoundSocket {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

impl BoundSocket {
    /// Removes the socket file if it is still the one we bound.
    pub(crate) fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "could not remove ipc socket");
                }
            }
            _ => {}
        }
    }
}
