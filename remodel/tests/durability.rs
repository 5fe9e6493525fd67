//! A database is one process's: a second process that opens the same path is refused with a
//! clear error (the crash tests are in `crash.rs`).

use remodel::Database;
use std::process::Command;

/// The child of the test below: tries to open a database another process holds.
#[tokio::test]
async fn lock_child() {
    let Some(dir) = std::env::var_os("REMODEL_LOCK_DIR") else {
        return;
    };
    match Database::open(std::path::Path::new(&dir)).await {
        Ok(_) => println!("\nopened"),
        Err(e) => println!("\nrefused: {e}"),
    }
}

#[tokio::test]
async fn a_database_open_in_another_process_is_refused_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("remodel-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = Database::open(&dir).await.unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_child", "--nocapture", "--test-threads=1"])
        .env("REMODEL_LOCK_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("refused") || l.starts_with("opened"))
        .unwrap_or("");
    assert!(
        line.starts_with("refused: storage error: cannot open the database at"),
        "{stdout}"
    );
    assert!(line.contains("another process"), "{line}");
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}
