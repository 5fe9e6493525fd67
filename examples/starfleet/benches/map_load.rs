//! The sector map under a fast drag: `cargo bench -p starfleet --bench map_load [-- --quick]`.
//!
//! The app on 127.0.0.1 (a temporary database, its own settings), 100 WebSocket clients each
//! subscribed to the `map` publication, and one drag: 200 position writes a second to one
//! ship for three seconds, then a pause, ten times. The writes go through `move_ship`, the function
//! the page's method calls (a page's own calls are limited to 20 a second per connection, so
//! the 200 a second of the load are made by the program itself).
//!
//! - `map_updates_per_client_per_s`: `change` frames of the map each client received per
//!   second, from each drag's first write until every client shows its last (target ≤ 20:
//!   the 50 ms window squashes a drag's writes);
//! - `map_final_position_lag_ms` p50/p99: from the drag's last write (acknowledged) until a
//!   client shows that position, over every client and drag (target p99 ≤ 150).
//!
//! Prints one JSON line per figure.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use starfleet::{open_database, publications, router, AppState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What one client saw: map frames, and the ship's latest x with when it arrived.
#[derive(Default)]
struct Seen {
    frames: AtomicU64,
    last: Mutex<(f64, Option<Instant>)>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn figure(name: &str, value: f64, unit: &str, target: &str, met: bool) {
    println!(
        "{}",
        json!({"name": name, "value": (value * 100.0).round() / 100.0, "unit": unit, "target": target, "met": met})
    );
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Drags of 3 s: a frame goes out at once when a drag starts, then at most one per window,
    // so a drag of T seconds gets at most 1 + 20·T frames (a 1 s drag's first frame alone
    // would be 5 % of its rate).
    let (clients, drags, per_drag) = if quick { (20, 3, 200) } else { (100, 10, 600) };
    let db = open_database(None).await.unwrap();
    let state = AppState::new(db.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let mut seen = Vec::new();
    for _ in 0..clients {
        let s = Arc::new(Seen::default());
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/remodel/ws"))
            .await
            .unwrap();
        let sub = json!({"op": "sub", "id": 1, "name": "map", "params": {}});
        ws.send(Message::text(sub.to_string())).await.unwrap();
        let (mut tx, mut rx) = ws.split();
        // Pings, as the page's client sends them (an idle connection is closed after 30 s).
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let ping = Message::text(json!({"op": "ping"}).to_string());
                if tx.send(ping).await.is_err() {
                    break;
                }
            }
        });
        let mine = s.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                let Ok(text) = msg.into_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if v["t"] != "change" && v["t"] != "reset" && v["t"] != "more" {
                    continue;
                }
                mine.frames
                    .fetch_add(u64::from(v["t"] == "change"), Ordering::Relaxed);
                let rows = v["rows"].as_array().cloned().unwrap_or_default();
                for r in rows.iter().filter(|r| r[0] == "voyager") {
                    if let Some(x) = r[1]["x"].as_f64() {
                        *mine.last.lock().unwrap() = (x, Some(Instant::now()));
                    }
                }
            }
        });
        seen.push(s);
    }
    // Every client has its first result.
    while seen.iter().any(|s| s.last.lock().unwrap().1.is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut lags = Vec::new();
    let mut frames_during = 0;
    let mut dragging = Duration::ZERO;
    for drag in 0..drags {
        let before: u64 = seen.iter().map(|s| s.frames.load(Ordering::Relaxed)).sum();
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5)); // 200 a second
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut x = 0.0;
        for i in 0..per_drag {
            tick.tick().await;
            x = f64::from((drag * per_drag + i) % 800);
            publications::move_ship(&db, "voyager", x, 100.0)
                .await
                .unwrap();
        }
        let last_write = Instant::now();
        // Until every client shows the final position (at most 2 s).
        let deadline = last_write + Duration::from_secs(2);
        loop {
            let shown: Vec<Option<Instant>> = seen
                .iter()
                .map(|s| match *s.last.lock().unwrap() {
                    (seen_x, at) if seen_x == x => at,
                    _ => None,
                })
                .collect();
            if shown.iter().all(Option::is_some) || Instant::now() > deadline {
                // The frames counted came between the drag's start and now.
                dragging += Instant::now() - started;
                for at in shown {
                    let lag = at.map_or(2000.0, |at| {
                        at.saturating_duration_since(last_write).as_secs_f64() * 1000.0
                    });
                    lags.push(lag);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let after: u64 = seen.iter().map(|s| s.frames.load(Ordering::Relaxed)).sum();
        frames_during += after - before;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lags.sort_by(f64::total_cmp);
    let per_client_per_s = frames_during as f64 / clients as f64 / dragging.as_secs_f64();
    figure(
        "map_updates_per_client_per_s",
        per_client_per_s,
        "frames/s",
        "<= 20",
        per_client_per_s <= 20.0,
    );
    let p99 = percentile(&lags, 0.99);
    figure(
        "map_final_position_lag_ms_p50",
        percentile(&lags, 0.5),
        "ms",
        "reported",
        true,
    );
    figure(
        "map_final_position_lag_ms_p99",
        p99,
        "ms",
        "<= 150",
        p99 <= 150.0,
    );
    println!(
        "{}",
        json!({"clients": clients, "drags": drags, "writes_per_drag": per_drag, "dragging_s": dragging.as_secs_f64(), "samples": lags.len()})
    );
}
