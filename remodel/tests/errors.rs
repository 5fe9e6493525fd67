//! Storage and serialization failures keep the error behind them.

use remodel::{Database, Error};
use std::error::Error as _;

#[tokio::test]
async fn a_storage_failure_keeps_its_source() {
    let dir = std::env::temp_dir().join(format!("remodel-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A file where the database's folder would be: the file system refuses.
    let file = dir.join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let err = Database::open(file.join("db"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    let source = err.source().expect("the io error is kept");
    assert!(
        source
            .downcast_ref::<remodel::Source>()
            .is_some_and(|s| s.get().downcast_ref::<std::io::Error>().is_some()),
        "{source:?}"
    );
    // Equal errors compare equal, sources included.
    let again = Database::open(file.join("db")).await.err().unwrap();
    assert_eq!(err, again);
    std::fs::remove_dir_all(&dir).unwrap();
}
