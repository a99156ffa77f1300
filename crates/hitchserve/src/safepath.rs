//! Paths that other local users might tamper with: the per-user directory under the temporary
//! directory, and directories and files made inside trees that must stay ours.
//!
//! Owns the rule that the library never trusts or follows a path another user can write.
//! `/tmp` is shared and, on many machines (`fs.protected_symlinks = 0`), a root process that
//! follows a symlink planted there can be made to truncate, chown or load any file. So every
//! shared path hangs off one per-user directory, `$TMPDIR/hitchserve-<uid>`, that is created
//! here or checked to be a real directory (not a link), owned by us and writable by nobody
//! else; below it, nothing can be planted. A hostile pre-existing path is an error that says
//! what is wrong with it and what to do, never something to work around silently.
//!
//! Also owns making directories for services that run as another user (handed over through
//! the opened directory, never a path) and checking, before anything starts, that such a user
//! can reach what it needs.
//!
//! Invariant: every directory this module makes or accepts can be written only by the current
//! user (or the service user it was handed to), and is reached through directories that only
//! the current user or root can change.

use std::fs::{DirBuilder, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Where the per-user directory is: `$TMPDIR/hitchserve-<uid>`. Only a name: use it through
/// [`user_dir`] or [`user_subdir`], which create or check it.
fn user_dir_path() -> PathBuf {
    std::env::temp_dir().join(format!("hitchserve-{}", euid()))
}

/// Where `user_subdir(name, ..)` is, for a path a service must know when it is defined; the
/// directory itself is made (and checked) by `user_subdir` before anything uses it.
pub(crate) fn user_subdir_path(name: &str) -> PathBuf {
    user_dir_path().join(name)
}

/// `$TMPDIR/hitchserve-<uid>` (mode 0711: other users, e.g. a database's own user, may reach
/// what is inside only where a subdirectory lets them), created or checked.
pub(crate) fn user_dir() -> Result<PathBuf> {
    check_shared_parent(&std::env::temp_dir())?;
    let dir = user_dir_path();
    ensure_dir(&dir, 0o711)?;
    Ok(dir)
}

/// `user_dir()/name`, created or checked, with this mode (0700 keeps it to us; 0755 lets
/// service users read it).
pub(crate) fn user_subdir(name: &str, mode: u32) -> Result<PathBuf> {
    let dir = user_dir()?.join(name);
    ensure_dir(&dir, mode)?;
    Ok(dir)
}

/// A random name (16 hex digits) for something made where others could guess and plant a
/// predictable one: `/dev/shm` objects, per-run directories.
pub(crate) fn random_name() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: a valid buffer of the given length; getrandom has no other preconditions.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let value = if n == 8 {
        u64::from_ne_bytes(bytes)
    } else {
        // No getrandom (very old kernels): std's per-process random hasher keys.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
        h.finish()
    };
    format!("{value:016x}")
}

/// The temporary directory and every directory above it must be owned by root or us, and
/// any that others may write to must be sticky: else someone else could rename what we make
/// there and put their own in its place (the sticky bit does not stop a directory's owner).
fn check_shared_parent(dir: &Path) -> Result<()> {
    for d in dir.ancestors() {
        let meta = std::fs::metadata(d).map_err(|source| Error::Io {
            context: format!("the temporary directory `{}` can't be used", dir.display()),
            source,
        })?;
        let mode = meta.permissions().mode();
        if meta.uid() != 0 && meta.uid() != euid() {
            return Err(unsafe_path(
                d,
                &format!(
                    "is owned by uid {}, who could replace what we make below it",
                    meta.uid()
                ),
            ));
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(unsafe_path(
                d,
                "is writable by other users but not sticky (`chmod +t` it), so they could replace what we make there",
            ));
        }
    }
    Ok(())
}

/// `dir` (a directory of a project's `.hitchserve/` tree) made with `mode`, or the one there
/// if it is a real directory — never a link followed — of ours (its mode then set to `mode`),
/// of root's, or of `project_owner` (who is trusted: whoever can write the project can
/// change the code its services run anyway), that no other user can write: a `.hitchserve`
/// the checkout's owner made is used by root (`sudo`), and one root made by its owner if it
/// can write there. One that others can write (or could: a mode is only ever narrowed by
/// the umask, so a wider one was set by hand) is refused, not made private again: what they
/// put in it meanwhile would be trusted.
pub(crate) fn ensure_state_dir(dir: &Path, mode: u32, project_owner: u32) -> Result<()> {
    let meta = made_or_there(dir, mode).map_err(|e| match e {
        Error::Io { context, source }
            if matches!(source.raw_os_error(), Some(libc::EROFS | libc::EACCES)) =>
        {
            Error::Io {
                context: format!(
                    "{context} (a bundle keeps its runs and logs in the project's `.hitchserve/`: \
                     run it in a project directory you can write)"
                ),
                source,
            }
        }
        other => other,
    })?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(
            dir,
            "is a symbolic link, which we never follow there",
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_path(dir, "is not a directory"));
    }
    let current = meta.permissions().mode() & 0o7777;
    if meta.uid() != euid() && meta.uid() != 0 && meta.uid() != project_owner {
        return Err(unsafe_path(
            dir,
            &format!(
                "is owned by uid {}, neither you (uid {}), root nor the project's owner",
                meta.uid(),
                euid()
            ),
        ));
    }
    if current & 0o022 != 0 {
        return Err(unsafe_path(
            dir,
            &format!(
                "is writable by other users (mode {current:o}), who may have put files in it \
                 that would be trusted; remove it (`rm -r`), and hitchserve makes it again"
            ),
        ));
    }
    if meta.uid() == euid() && current != mode {
        set_mode(dir, mode)?;
    }
    Ok(())
}

/// Make `dir` with `mode` (its parent must exist), or check that the existing one is ours:
/// a real directory, not a symlink, owned by us, writable by nobody else. Its mode is then
/// set to `mode` exactly (the umask may have narrowed it).
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    let meta = made_or_there(dir, mode)?;
    check_ours(dir, &meta, true)?;
    if meta.permissions().mode() & 0o7777 != mode {
        set_mode(dir, mode)?;
    }
    Ok(())
}

/// `dir` made with `mode` (its parent must exist) or already there: what `lstat` says of it.
fn made_or_there(dir: &Path, mode: u32) -> Result<Metadata> {
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(Error::Io {
                context: format!("could not create `{}`", dir.display()),
                source,
            })
        }
    }
    std::fs::symlink_metadata(dir).map_err(|source| Error::Io {
        context: format!("could not inspect `{}`", dir.display()),
        source,
    })
}

/// Set `dir`'s mode to `mode` exactly (the umask may have narrowed it). Only on a directory
/// just checked to be a real one of ours, in a parent nobody else can change.
fn set_mode(dir: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::Io {
            context: format!("could not set the mode of `{}`", dir.display()),
            source,
        }
    })
}

/// Whether `meta` (from `lstat`) describes something of ours that nobody else can change.
pub(crate) fn check_ours(path: &Path, meta: &Metadata, want_dir: bool) -> Result<()> {
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(
            path,
            "is a symbolic link, which we never follow there",
        ));
    }
    if want_dir && !meta.is_dir() {
        return Err(unsafe_path(path, "is not a directory"));
    }
    if !want_dir && !meta.is_file() {
        return Err(unsafe_path(path, "is not a regular file"));
    }
    if meta.uid() != euid() {
        return Err(unsafe_path(
            path,
            &format!("is owned by uid {}, not by us (uid {})", meta.uid(), euid()),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(unsafe_path(path, "is writable by other users"));
    }
    Ok(())
}

fn unsafe_path(path: &Path, problem: &str) -> Error {
    Error::UnsafePath {
        path: path.to_path_buf(),
        problem: problem.to_owned(),
    }
}

/// Create `path` (and missing parents) and, if `owner` is given, hand the directory itself to
/// that uid and gid. An existing directory is used only if it is ours (or the owner's) and
/// not writable by others. The ownership change is made on the opened directory (`O_DIRECTORY |
/// O_NOFOLLOW`, then `fchown`), so a symlink or a hard link swapped in at that name can never
/// redirect it to another file. A final component that is a symlink is refused.
pub(crate) fn make_dir_for(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let io = |source| Error::Io {
        context: format!("could not create `{}`", path.display()),
        source,
    };
    match DirBuilder::new().mode(mode).recursive(false).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(mode)
                .recursive(true)
                .create(path)
                .map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                unsafe_path(path, "is a symbolic link or not a directory")
            } else {
                io(e)
            }
        })?;
    // An existing directory must be ours (or already the target user's) and closed to
    // others: else whoever made it could keep files there that we would adopt.
    let meta = dir.metadata().map_err(io)?;
    let target = owner.map(|(uid, _)| uid);
    if meta.uid() != euid() && Some(meta.uid()) != target {
        return Err(unsafe_path(
            path,
            &format!("exists and is owned by uid {}, not by us", meta.uid()),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(unsafe_path(path, "exists and is writable by other users"));
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(|source| Error::Io {
            context: format!("could not give `{}` to uid {uid}", path.display()),
            source,
        })?;
    }
    Ok(())
}

/// What a service needs to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read a file (the shim, the clock files).
    Read,
    /// Enter a directory (its working directory).
    Search,
    /// Run a program.
    Execute,
}

impl Access {
    fn bits(self) -> u32 {
        match self {
            Access::Read => 0o4,
            Access::Search | Access::Execute => 0o1,
        }
    }
}

/// Whether the user `uid` with group `gid` may search every directory on the way to `path`
/// and do `access` to it. Services started as another user run with that one group only
/// (std drops supplementary groups when root switches users), so no other group counts.
/// Root may do anything. Used before starting a service as another user, so that a path it
/// can't reach is an error up front, not a "Permission denied" or, worse, a silently real
/// clock later (the loader only warns when it can't preload a library).
pub(crate) fn user_can(path: &Path, access: Access, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let allowed = |meta: &Metadata, bits: u32| {
        let mode = meta.permissions().mode();
        let have = if meta.uid() == uid {
            mode >> 6
        } else if meta.gid() == gid {
            mode >> 3
        } else {
            mode
        };
        have & bits == bits
    };
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        match std::fs::metadata(dir) {
            Ok(meta) if allowed(&meta, 0o1) => {}
            _ => return false,
        }
    }
    std::fs::metadata(path).is_ok_and(|meta| allowed(&meta, access.bits()))
}

/// The first directory on the way to `path` that `uid` can't search, or `path` itself, for
/// a message.
pub(crate) fn first_blocked(path: &Path, uid: u32, gid: u32) -> PathBuf {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    ancestors
        .into_iter()
        .find(|p| !user_can(p, Access::Search, uid, gid))
        .map_or_else(|| path.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_ours_is_accepted_and_a_symlink_is_not() {
        let base = std::env::temp_dir().join(format!("hs-safepath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        ensure_dir(&base, 0o700).unwrap();
        ensure_dir(&base, 0o700).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        let err = ensure_dir(&link, 0o700).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let err = make_dir_for(&link, 0o700, None).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // Someone else's directory is not adopted (as root: chown it to `nobody`).
        if euid() == 0 {
            let theirs = base.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let err = make_dir_for(&theirs, 0o700, None).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534"), "{err}");
            make_dir_for(&theirs, 0o700, Some((65534, 65534))).unwrap();
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let meta = std::fs::symlink_metadata(&base).unwrap();
        assert!(check_ours(&base, &meta, true).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
