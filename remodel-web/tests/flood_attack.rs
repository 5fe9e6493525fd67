//! A client that floods frames and never reads the answers, against a running server on
//! 127.0.0.1. In a test binary of its own: it measures the process's resident memory,
//! which other tests running beside it would move.

mod common;

use common::{start, App, Client};
use futures::SinkExt;
use remodel::json;
use remodel_web::Limits;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The server still serves: a new client subscribes and gets its rows.
async fn still_serves(app: &App) {
    let mut c = Client::connect(app, "uhura").await;
    c.sub(1, "members", json!(null)).await;
    c.until(|v| v["t"] == "reset").await;
    assert_eq!(c.docs(1).len(), 4);
}

/// The resident memory of this process (server and clients), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A client that floods cheap frames each answered by the server (malformed ones: a
/// `bad_frame` error 60 times their size; pings) and never reads the answers costs the
/// server its byte budget, not the answers: once that much waits for the client, the server
/// stops reading its frames (the client's own socket fills), and the client is cut off when
/// it takes nothing within the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_frames_it_never_reads_the_answers_of_costs_its_byte_budget() {
    let app = start(Limits::default()).await;
    let mut flooder = Client::connect(&app, "kirk").await;
    let before = rss();
    // 1,000,000 two-byte frames: about 120 MB of answers if they were all queued.
    let flood = tokio::spawn(async move {
        for i in 0..1_000_000u32 {
            let frame = if i % 2 == 0 { "{}" } else { r#"{"op":"ping"}"# };
            if flooder.ws.feed(Message::text(frame)).await.is_err() {
                return;
            }
            if i % 1_000 == 0 && flooder.ws.flush().await.is_err() {
                return;
            }
        }
        let _ = flooder.ws.flush().await;
    });
    // Long enough for the whole flood to be read, were it read.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "the server queued {} MB of answers for a client that reads none",
        grown >> 20
    );
    still_serves(&app).await;
    flood.abort();
}
