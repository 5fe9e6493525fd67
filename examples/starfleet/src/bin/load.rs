//! Load program: 1,000 concurrent SSE clients on ship pages.
//!
//! `cargo run --release -p starfleet --bin load [-- --rounds 5 --clients 1000 --posts 600 --latency-writes 150]`
//!
//! Starts the app on its own runtime (a fresh database under `target/`), then, side by side
//! in one run:
//!
//! 1. `writes_none`: form posts per second (adding crew members through `POST
//!    /ship/{id}/crew`, 8 posters) with no live client;
//! 2. opens `--clients` SSE streams, spread over the three ship pages
//!    (`/ship/{id}/events`), and waits until each has its first event;
//! 3. `sse_delivery_p99_ms`: writes one member at a time (one every 20 ms, rotating ships)
//!    and measures, per write, the time from sending the POST until every client watching
//!    that ship has the event (the POST includes the commit and its fsync, so this is an
//!    upper bound of commit → delivered); also the p99 over single deliveries;
//! 4. `writes_with_1k_sse`: the posts of step 1 again, with the clients connected (each
//!    post is delivered to a third of them).
//!
//! Prints the figures as `name: value` lines.

use starfleet::{open_database, router, AppState};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHIPS: [&str; 3] = ["voyager", "enterprise", "defiant"];
const POSTERS: usize = 8;

struct Options {
    rounds: usize,
    clients: usize,
    posts: usize,
    latency_writes: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        rounds: 5,
        clients: 1000,
        posts: 600,
        latency_writes: 150,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--clients" => o.clients = value,
            "--rounds" => o.rounds = value.max(1),
            "--posts" => o.posts = value,
            "--latency-writes" => o.latency_writes = value,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

/// One `POST` over a new connection; panics unless the app answers 303 (a load program).
async fn post(addr: SocketAddr, path: &str, form: &str) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.expect("reply");
    assert!(
        reply.starts_with(b"HTTP/1.1 303"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

/// The seeded members, three per ship, in ship order (`MEMBERS[i] is on SHIPS[i % 3]`).
const MEMBERS: [&str; 9] = [
    "janeway", "picard", "sisko", "neelix", "data", "dax", "tuvok", "troi", "kira",
];

/// Edits member `i % 9` (its name becomes `{name}`): a change on that ship's page.
async fn edit(addr: SocketAddr, i: usize, name: &str) {
    let form = format!("name={name}&rank=ensign&species=human");
    post(addr, &format!("/member/{}", MEMBERS[i % 9]), &form).await;
}

/// `n` edits (names `{prefix}-{i}`) from [`POSTERS`] concurrent posters; posts per second.
/// Edits keep the crews at their size, so that every round costs the same.
async fn posts_per_second(addr: SocketAddr, n: usize, prefix: &str) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let posters: Vec<_> = (0..POSTERS)
        .map(|_| {
            let (next, prefix) = (next.clone(), prefix.to_string());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    edit(addr, i, &format!("{prefix}-{i}")).await;
                }
            })
        })
        .collect();
    for p in posters {
        p.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// What the clients record of the latency writes.
struct Deliveries {
    base: Instant,
    /// Per latency write: when it was sent, and the latest delivery (ns since `base`).
    sent: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    received: Vec<AtomicUsize>,
    /// Every single delivery's latency, ns.
    each: Mutex<Vec<u64>>,
    ready: AtomicUsize,
}

/// One SSE client: reads its stream and notes each `lat-{i}` marker once.
async fn client(addr: SocketAddr, ship: &str, d: Arc<Deliveries>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /ship/{ship}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut seen = HashSet::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut ready = false;
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = d.base.elapsed().as_nanos() as u64;
        buf.extend_from_slice(&chunk[..n]);
        // Only whole events: an SSE event ends with a blank line.
        let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") else {
            continue;
        };
        let events = &buf[..end];
        if !ready && find(events, b"event: crew-reset").is_some() {
            ready = true;
            d.ready.fetch_add(1, Ordering::Relaxed);
        }
        let mut rest = events;
        while let Some(at) = find(rest, b"lat-") {
            rest = &rest[at + 4..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let Some(i) = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
            else {
                continue;
            };
            if i < d.sent.len() && seen.insert(i) {
                d.last[i].fetch_max(now, Ordering::Relaxed);
                d.received[i].fetch_add(1, Ordering::Relaxed);
                let sent = d.sent[i].load(Ordering::Relaxed);
                d.each.lock().unwrap().push(now.saturating_sub(sent));
            }
        }
        buf.drain(..end + 2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn p99(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(i).copied().unwrap_or(0) as f64 / 1e6
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = options()?;
    // The app gets a runtime of its own, as it would in its own process.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("app")
        .enable_all()
        .build()?;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/starfleet-load-data");
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, state) = server.block_on(async {
        let state = AppState::new(open_database(Some(&dir)).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = router(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok::<_, Box<dyn std::error::Error>>((addr, state))
    })?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("clients")
        .enable_all()
        .build()?;
    clients.block_on(run(addr, state, o))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Opens `n` SSE clients and waits until each has its first event.
async fn connect(
    addr: SocketAddr,
    n: usize,
    d: &Arc<Deliveries>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    d.ready.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let clients = (0..n)
        .map(|i| tokio::spawn(client(addr, SHIPS[i % 3], d.clone())))
        .collect();
    while d.ready.load(Ordering::Relaxed) < n {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} of {n} clients connected",
                d.ready.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "clients_connected: {n} in {} ms",
        started.elapsed().as_millis()
    );
    Ok(clients)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(
    addr: SocketAddr,
    state: AppState,
    o: Options,
) -> Result<(), Box<dyn std::error::Error>> {
    let d = Arc::new(Deliveries {
        base: Instant::now(),
        sent: (0..o.latency_writes).map(|_| AtomicU64::new(0)).collect(),
        last: (0..o.latency_writes).map(|_| AtomicU64::new(0)).collect(),
        received: (0..o.latency_writes).map(|_| AtomicUsize::new(0)).collect(),
        each: Mutex::new(Vec::new()),
        ready: AtomicUsize::new(0),
    });
    posts_per_second(addr, o.posts / 4, "warm").await;

    // Throughput: alternating pairs (none, then with the clients), median ratio.
    let mut ratios = Vec::new();
    for round in 0..o.rounds {
        let none = posts_per_second(addr, o.posts, "a").await;
        let clients = connect(addr, o.clients, &d).await?;
        let with = posts_per_second(addr, o.posts, "b").await;
        println!("round {round}: writes_none_per_s {none:.0}, writes_with_1k_sse_per_s {with:.0}, ratio {:.3}", with / none);
        ratios.push(with / none);
        if round + 1 < o.rounds {
            // The app ends its streams; the clients' sockets close.
            state.disconnect_live_clients();
            clients.iter().for_each(|c| c.abort());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // Latency, with the clients of the last round: one write at a time.
    for i in 0..o.latency_writes {
        d.sent[i].store(d.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        edit(addr, i, &format!("lat-{i}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watching = |i: usize| (0..o.clients).filter(|c| c % 3 == i % 3).count();
    let waited = Instant::now();
    while (0..o.latency_writes).any(|i| d.received[i].load(Ordering::Relaxed) < watching(i))
        && waited.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing: usize = (0..o.latency_writes)
        .map(|i| watching(i).saturating_sub(d.received[i].load(Ordering::Relaxed)))
        .sum();
    let per_write: Vec<u64> = (0..o.latency_writes)
        .map(|i| {
            d.last[i]
                .load(Ordering::Relaxed)
                .saturating_sub(d.sent[i].load(Ordering::Relaxed))
        })
        .collect();
    let mut sorted = per_write.clone();
    sorted.sort_unstable();
    println!("sse_delivery_p99_ms: {:.1}", p99(per_write));
    println!(
        "sse_delivery_p50_ms: {:.1}",
        sorted[sorted.len() / 2] as f64 / 1e6
    );
    println!(
        "sse_single_delivery_p99_ms: {:.1}",
        p99(d.each.lock().unwrap().clone())
    );
    println!("sse_deliveries_missing: {missing}");
    println!(
        "writes_with_1k_sse_vs_none: {:.3} (median of {} pairs)",
        median(ratios),
        o.rounds
    );
    Ok(())
}
