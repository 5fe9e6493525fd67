//! Many tasks writing at once on a multi-threaded runtime: a small write that finds the
//! commit lock taken is left for the lock's holder to commit (flat combining). Each writer
//! must still get its own write's result, every write must commit exactly once, in one
//! order that feeds see, and no writer may be stranded when the lock is held by something
//! that takes no handoffs (DDL, a feed opening).

use futures::StreamExt;
use remodel::{Config, Durability, IndexSpec};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const TASKS: u64 = 8;
const PER_TASK: u64 = 300;

#[test]
fn every_writer_gets_its_own_result_and_every_write_commits_once_in_order() {
    let rt = runtime();
    rt.block_on(async {
        let db = Config::temporary()
            .durability(Durability::Soft)
            .open()
            .await
            .unwrap();
        db.create_table("w").await.unwrap();
        let t = db.table("w");
        let mut feed = t.changes().await.unwrap();
        let writers: Vec<_> = (0..TASKS)
            .map(|w| {
                let t = t.clone();
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let id = w * PER_TASK + i;
                        let r = t.insert(json!({"id": id, "w": w})).await.unwrap();
                        assert_eq!((r.inserted, r.errors), (1, 0), "writer {w}, row {id}");
                        // Every tenth write collides with a row of this writer: the error is
                        // this writer's, not another's.
                        if i % 10 == 9 {
                            let r = t.insert(json!({"id": id - 1})).await.unwrap();
                            assert_eq!((r.inserted, r.errors), (0, 1), "writer {w}, row {id}");
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("no writer is stranded")
                .unwrap();
        }
        assert_eq!(t.count().await.unwrap(), TASKS * PER_TASK);
        // The feed saw each insert once, in strictly increasing commit order.
        let mut seen = HashSet::new();
        let mut last = 0;
        while seen.len() < (TASKS * PER_TASK) as usize {
            let c = tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .expect("every insert reaches the feed")
                .unwrap()
                .unwrap();
            let seq = c.seq().expect("a change has a number");
            assert!(seq > last, "commit order: {seq} after {last}");
            last = seq;
            let id = c.new_val().unwrap()["id"].as_u64().unwrap();
            assert!(seen.insert(id), "row {id} delivered twice");
        }
    });
}

#[test]
fn writers_are_not_stranded_while_ddl_and_feeds_hold_the_lock() {
    let rt = runtime();
    rt.block_on(async {
        let db = Config::temporary()
            .durability(Durability::Hard)
            .open()
            .await
            .unwrap();
        db.create_table("w").await.unwrap();
        let t = db.table("w");
        let writers: Vec<_> = (0..TASKS)
            .map(|w| {
                let t = t.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        t.insert(json!({"id": w * 1000 + i, "n": i})).await.unwrap();
                    }
                })
            })
            .collect();
        // Meanwhile: index builds, index drops and feeds opening take the commit lock.
        for round in 0..5 {
            let name = format!("n{round}");
            t.create_index(&name, IndexSpec::field("n")).await.unwrap();
            let feed = t.changes().include_initial(true).await.unwrap();
            drop(feed);
            t.drop_index(&name).await.unwrap();
        }
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("no writer is stranded")
                .unwrap();
        }
        assert_eq!(t.count().await.unwrap(), TASKS * 100);
    });
}
