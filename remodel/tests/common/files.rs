//! Databases in folders: unique scratch folders, reopening a database a dropped handle may
//! still hold, and small file systems (a tmpfs) to fill up or make read-only.

use remodel::{json, Database, Error, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A folder under the system temp dir, unique to this test run (not created; any leftover of
/// that name is removed).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "remodel-test-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A scratch folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        TempDir(scratch(tag))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database at `dir` with a table `t` of `docs` documents of about 200 bytes, closed.
pub async fn make_db(dir: &Path, docs: i64) {
    let db = Database::open(dir).await.unwrap();
    db.create_table("t").await.unwrap();
    let rows: Vec<Value> = (0..docs)
        .map(|i| json!({"id": i, "pad": "x".repeat(200)}))
        .collect();
    db.table("t").insert_many(rows).await.unwrap();
    db.close().await.unwrap();
}

/// Opens `dir`, retrying while a handle of this process that was just dropped still holds
/// the files.
pub async fn open_retry(dir: &Path) -> Result<Database, Error> {
    let mut tries = 0;
    loop {
        match Database::open(dir).await {
            Err(Error::Storage { message: m, .. })
                if m.contains("still open in this process") && tries < 100 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// A small tmpfs mounted for one test, unmounted (and its folder removed) when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `dir`; `None` where this
    /// machine does not allow mounting one (it needs root and mount rights).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            Some(Tmpfs(dir.to_path_buf()))
        } else {
            let _ = std::fs::remove_dir(dir);
            None
        }
    }

    /// [`Tmpfs::mount`] on a new scratch folder; where no tmpfs can be mounted, says that the
    /// test is skipped.
    pub fn scratch(name: &str, size: &str) -> Option<Tmpfs> {
        let fs = Tmpfs::mount(&scratch(name), size);
        if fs.is_none() {
            println!("SKIPPED: cannot mount a tmpfs here (needs root and mount rights)");
        }
        fs
    }

    pub fn remount_read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Fills the file system up to the last byte.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the files and folders in `from` into `to` (made when missing): a database's folder,
/// to start again from the same bytes.
pub fn copy_into(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_into(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
