//! The change log's segment files: made with their space reserved, mapped into memory and
//! written through the mapping (no system call per commit), synced, listed and removed. All
//! of the log's `unsafe` is here, each block with its argument: [`Mapped`] (the mapping) and
//! [`reserve`] (`posix_fallocate`).
//!
//! A segment is named after the first change it holds (`<16 hex digits>.log`), so the files
//! of a log list in its order.

use super::io_error;
use super::record::{Header, ABORT_BYTES, SEAL_BYTES};
use crate::storage::Storage;
use crate::Result;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

/// The file name of the segment whose first change is `first`.
pub(super) fn segment_name(first: u64) -> String {
    format!("{first:016x}.log")
}

/// A segment file mapped into memory (shared with the file): a record is copied into it,
/// with no system call per commit. Once copied it is in the kernel's page cache, so a killed
/// process loses nothing of it; `fsync` of the file makes it durable. The file's space is
/// reserved when it is made (`posix_fallocate`), so a write into the mapping does not fail for
/// want of space where the file system can reserve it.
///
/// The mapping stays valid for `cap` bytes from `new` to `drop` (it is unmapped only there);
/// no slice of it is ever handed out, so the only accesses are the copies of `write_at` and
/// `clear_from`, bounds-checked against `cap`. The file is the log's own: nothing else
/// shortens it while it is mapped (an outside `truncate` would make an access fault, as it
/// would for any mapped file).
pub(super) struct Mapped {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the mapping is plain memory owned by this value, not tied to the thread that made
// it; it is only written through `&mut self` (the log keeps it under the writer's mutex),
// and unmapped once, on drop. It is not `Sync`: no `&Mapped` is shared across threads.
unsafe impl Send for Mapped {}

impl Mapped {
    /// Maps the first `cap` bytes of `file` (which is at least that long).
    pub(super) fn new(file: &File, cap: usize) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: asks for a fresh shared mapping (the kernel picks the address, so no
        // existing memory is replaced) of a file we hold open, of a length the file has (the
        // caller sized it); the result is checked for `MAP_FAILED` before it is used.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_error("map a segment", std::io::Error::last_os_error()));
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            cap,
        })
    }

    /// The mapping's length: the bytes a record may be written to.
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// Copies `bytes` to offset `at` (the caller checked that they fit: past the end it
    /// panics).
    pub(super) fn write_at(&mut self, at: usize, bytes: &[u8]) {
        assert!(
            at + bytes.len() <= self.cap,
            "a record past its segment's end"
        );
        // SAFETY: `at..at + len` is inside the mapping (checked above; `ptr` is valid for
        // `cap` bytes until drop), and the source cannot overlap it: no reference into the
        // mapping exists (none is handed out), so `bytes` is other memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) }
    }

    /// Zeroes everything from `at` on (a torn record's bytes must not be read after a new
    /// one).
    pub(super) fn clear_from(&mut self, at: usize) {
        if at < self.cap {
            // SAFETY: `at < cap`, so `at..cap` is inside the mapping (valid for `cap` bytes
            // until drop), and `&mut self` means nothing else reads or writes it meanwhile.
            unsafe { std::ptr::write_bytes(self.ptr.add(at), 0, self.cap - at) }
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `cap` are exactly what `mmap` returned and was given in `new`;
        // this is the only unmapping, and no access follows it (the value is going away).
        unsafe {
            libc::munmap(self.ptr.cast(), self.cap);
        }
    }
}

/// Makes the file `cap` bytes long with its space reserved (sparse where the file system
/// cannot reserve).
pub(super) fn reserve(file: &File, cap: usize) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a system call that touches no memory of ours, on a file descriptor `file`
    // keeps open for the duration of the call.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, cap as libc::off_t) };
    match r {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file
            .set_len(cap as u64)
            .map_err(|e| io_error("size a segment", e)),
        e => Err(io_error(
            "reserve space for a segment",
            std::io::Error::from_raw_os_error(e),
        )),
    }
}

/// The segment files in `dir`, by first sequence number: files named exactly as
/// [`segment_name`] names them (any other file is not the log's).
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("be listed", e))? {
        let entry = entry.map_err(|e| io_error("be listed", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(hex) = name.strip_suffix(".log") else {
            continue;
        };
        if let Ok(first) = u64::from_str_radix(hex, 16) {
            if segment_name(first) == name {
                firsts.push(first);
            }
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Makes the segment file for the changes from `first` on, `cap` bytes long, with its
/// header. A hard write is on disk once its record is, so the new file's name must be too
/// (an `fdatasync` of the file does not promise its directory entry survives a power loss).
/// The header itself needs no sync of its own: the first sync of a record covers it, and a
/// segment found without a readable one is read all the same (see `recovery::examine`).
pub(super) fn create_segment(dir: &Path, first: u64, cap: usize) -> Result<(Mapped, Arc<File>)> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join(segment_name(first)))
        .map_err(|e| io_error("create a segment", e))?;
    reserve(&file, cap)?;
    file.write_all_at(&Header::new(first).encode(), 0)
        .map_err(|e| io_error("write a segment's header", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("make a new segment durable", e))?;
    Ok((Mapped::new(&file, cap)?, Arc::new(file)))
}

/// `fdatasync`s a segment. A failure is fatal, and marks `storage` failed: Linux reports a
/// failed writeback once, so syncing again would succeed and acknowledge hard writes whose
/// records never reached the disk.
pub(super) fn sync_segment(file: &File, storage: &Storage) -> Result<()> {
    file.sync_data().map_err(|e| {
        storage.mark_failed(format!("the change log could not be written to disk: {e}"))
    })
}

/// Opens an existing segment to append to after its first `valid` bytes (at least its
/// header), with room for a record's abort and the segment's seal after them.
pub(super) fn reopen_segment(
    dir: &Path,
    first: u64,
    valid: usize,
    segment_bytes: usize,
) -> Result<(Mapped, Arc<File>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(segment_name(first)))
        .map_err(|e| io_error("open a segment", e))?;
    let size = file
        .metadata()
        .map_err(|e| io_error("open a segment", e))?
        .len() as usize;
    let cap = size
        .max(segment_bytes)
        .max(valid + ABORT_BYTES + SEAL_BYTES);
    if size < cap {
        reserve(&file, cap)?;
    }
    let mut map = Mapped::new(&file, cap)?;
    map.clear_from(valid);
    Ok((map, Arc::new(file)))
}

/// Removes segment files (a failure leaves a file below the floor, removed on the next open).
pub(super) fn remove_segments(dir: &Path, firsts: &[u64]) {
    for &first in firsts {
        if let Err(e) = std::fs::remove_file(dir.join(segment_name(first))) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("a segment of the change log could not be removed: {e}");
            }
        }
    }
}
