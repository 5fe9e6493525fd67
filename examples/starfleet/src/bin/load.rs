//! Load program: 1,000 concurrent SSE clients on ship pages.
//!
//! `cargo run --release -p starfleet --bin load [-- --rounds 7 --clients 1000 --posts 4000 --latency-writes 150]`
//!
//! Starts the app on its own runtime (a fresh database under `target/`, the app's own
//! settings), adds one probe member per ship (`probe-{ship}`, edited only by the latency
//! probe), then, side by side in one run:
//!
//! 1. `--rounds` pairs of throughput measurements (in alternating order), each the same `--posts`
//!    form posts (`POST /member/{id}`, editing the 9 seeded members in turn, from 8
//!    concurrent posters; edits keep every round's work the same):
//!    - `writes_none`: with no live client;
//!    - `writes_with_1k_sse`: with `--clients` SSE streams open, spread over the three ship
//!      pages (`/ship/{id}/events`), each having had its first event; every post changes a
//!      row on the page of a third of them.
//!
//!    During both, a probe edits a ship's probe member every 20 ms (rotating ships; its
//!    posts are not counted): with the clients connected it gives
//!    `sse_delivery_under_load_p99_ms`, the delivery time while the posters write. The
//!    ratio `writes_with_1k_sse_vs_none` is the median of the pairs' ratios.
//! 2. `sse_delivery_p99_ms`: after a pause, with the clients connected, writes one
//!    member at a time (one every 20 ms, rotating members and so ships) and measures, per
//!    write, the time from sending the POST until every client watching that ship has it
//!    (the POST includes the commit and its fsync, so this is an upper bound of commit →
//!    delivered); also the p99 over single deliveries.
//!
//! Each measurement also gives the CPU time the process (app, clients and storage together)
//! spent per post. `live_clients_cpu_cores` is what the clients add, in cores: the extra CPU
//! time per post with them, times their posts per second (median of the pairs). Unlike
//! posts per second, it is little moved by other programs competing for the machine.
//!
//! **Counting deliveries when events are coalesced.** The app sends the changes a page gets
//! within its throttle window (50 ms) as one event holding the latest state of each row, so
//! a marked write (`lat-{i}`, `busy-{i}`) can reach a client already overwritten by a later
//! write of the same member. A marker therefore counts, as delivered at that moment, every
//! earlier marked write of the same member the client has not seen yet: the page then shows
//! a state that includes it. Writes to one member are 180 ms apart in step 2 (9 members) and
//! 60 ms apart in the probe (3 members), both longer than the window, so overwrites should
//! be rare; a write that was lost would still show, as a delivery late by that much.
//!
//! Prints the figures as `name: value` lines.

use memchr::memmem;
use remodel::model::Id;
use remodel::Model;
use starfleet::models::Crewmember;
use starfleet::{open_database, router, AppState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHIPS: [&str; 3] = ["voyager", "enterprise", "defiant"];
const POSTERS: usize = 8;
/// The time between two latency writes (step 2) or probe writes (step 1).
const LATENCY_GAP: Duration = Duration::from_millis(20);
/// The most probe writes the program keeps track of.
const MAX_PROBES: usize = 5_000;

struct Options {
    rounds: usize,
    clients: usize,
    posts: usize,
    latency_writes: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        rounds: 7,
        clients: 1000,
        posts: 4000,
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
            "--latency-writes" => o.latency_writes = value.max(1),
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

/// Renames `member` to `name`: a change of one row on that member's ship page.
async fn rename(addr: SocketAddr, member: &str, name: &str) {
    let form = format!("name={name}&rank=ensign&species=human");
    post(addr, &format!("/member/{member}"), &form).await;
}

/// The CPU time this process used so far (all threads: app, clients, storage), in seconds,
/// from `/proc/self/stat` (0 where there is none).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses) start with the state;
    // utime and stime are the 12th and 13th, in clock ticks (100 a second on Linux).
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    ticks(11)
        .zip(ticks(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

/// What one throughput measurement gives: posts per second, and CPU ms per post.
struct Rate {
    per_s: f64,
    cpu_ms: f64,
}

/// `n` edits (names `{prefix}-{i}`, member `i % 9`) from [`POSTERS`] concurrent posters,
/// while `probe` writes; posts per second (the probe's not counted).
async fn posts_per_second(addr: SocketAddr, n: usize, prefix: &str, probe: Probe) -> Rate {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe.run(addr, done.clone()));
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let posters: Vec<_> = (0..POSTERS)
        .map(|_| {
            let (next, prefix) = (next.clone(), prefix.to_string());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    rename(addr, MEMBERS[i % 9], &format!("{prefix}-{i}")).await;
                }
            })
        })
        .collect();
    for p in posters {
        p.await.unwrap();
    }
    let rate = Rate {
        per_s: n as f64 / started.elapsed().as_secs_f64(),
        cpu_ms: (cpu_seconds() - cpu) * 1e3 / n as f64,
    };
    done.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    rate
}

/// The probe of a throughput measurement: every [`LATENCY_GAP`], renames the probe member
/// of the next ship, marked (`busy-{i}`, timed in `marks`) or not.
struct Probe {
    marks: Option<Arc<Shared>>,
}

impl Probe {
    async fn run(self, addr: SocketAddr, done: Arc<AtomicBool>) {
        let mut k = 0;
        while !done.load(Ordering::Relaxed) {
            let member = format!("probe-{}", SHIPS[k % 3]);
            match &self.marks {
                Some(d) => {
                    let ship = k % 3;
                    let watching = d.connected[ship].load(Ordering::Relaxed);
                    let Some(i) = d.busy.start(|i| i % 3 == ship, watching) else {
                        break;
                    };
                    rename(addr, &member, &format!("busy-{i}")).await;
                }
                None => rename(addr, &member, &format!("quiet-{k}")).await,
            }
            k += 1;
            tokio::time::sleep(LATENCY_GAP).await;
        }
    }
}

/// Marked writes and what the clients saw of them.
struct Marks {
    /// What a marker starts with in an event (`lat-`, `busy-`).
    prefix: &'static str,
    /// How many members the marked writes rotate over: write `i` and `i + period` are of
    /// the same member.
    period: usize,
    base: Instant,
    /// How many writes were started.
    started: AtomicUsize,
    /// Per write: when it was sent, and the latest delivery (ns since `base`).
    sent: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    /// Per write: how many clients had it, and how many watch its ship.
    received: Vec<AtomicUsize>,
    watching: Vec<AtomicUsize>,
    /// Every single delivery's latency, ns.
    each: Mutex<Vec<u64>>,
}

impl Marks {
    fn new(prefix: &'static str, period: usize, n: usize, base: Instant) -> Self {
        let zeros = |_| AtomicU64::new(0);
        Marks {
            prefix,
            period,
            base,
            started: AtomicUsize::new(0),
            sent: (0..n).map(zeros).collect(),
            last: (0..n).map(zeros).collect(),
            received: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            watching: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            each: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Starts the next write (its number, or `None` when all are used), timed from now,
    /// for `watching` clients; `fits(i)` says whether write `i` is of the member meant (the
    /// numbers of other members are skipped).
    fn start(&self, fits: impl Fn(usize) -> bool, watching: usize) -> Option<usize> {
        loop {
            let i = self.started.fetch_add(1, Ordering::Relaxed);
            if i >= self.sent.len() {
                return None;
            }
            if fits(i) {
                self.watching[i].store(watching, Ordering::Relaxed);
                self.sent[i].store(self.now(), Ordering::Relaxed);
                return Some(i);
            }
        }
    }

    /// A client saw the marker of write `i` at `now`: that write and the earlier ones of
    /// the same member it may have overwritten are delivered to it. `seen` is the client's
    /// record; `first` the first write started after it connected (it watches no earlier).
    fn saw(&self, i: usize, now: u64, seen: &mut [bool], first: usize) {
        for j in (i % self.period..=i.min(seen.len().saturating_sub(1))).step_by(self.period) {
            if j < first || seen[j] || self.sent[j].load(Ordering::Relaxed) == 0 {
                continue;
            }
            seen[j] = true;
            self.last[j].fetch_max(now, Ordering::Relaxed);
            self.received[j].fetch_add(1, Ordering::Relaxed);
            let sent = self.sent[j].load(Ordering::Relaxed);
            self.each.lock().unwrap().push(now.saturating_sub(sent));
        }
    }

    /// The started writes' figures: per write (time until the last client watching had it)
    /// p99 and p50, the p99 of single deliveries, and the deliveries missing.
    fn figures(&self) -> (f64, f64, f64, usize) {
        let n = self.started.load(Ordering::Relaxed).min(self.sent.len());
        let sent: Vec<usize> = (0..n)
            .filter(|&i| self.sent[i].load(Ordering::Relaxed) != 0)
            .collect();
        let missing = sent
            .iter()
            .map(|&i| {
                let watching = self.watching[i].load(Ordering::Relaxed);
                watching.saturating_sub(self.received[i].load(Ordering::Relaxed))
            })
            .sum();
        let per_write: Vec<u64> = sent
            .iter()
            .map(|&i| {
                let last = self.last[i].load(Ordering::Relaxed);
                last.saturating_sub(self.sent[i].load(Ordering::Relaxed))
            })
            .collect();
        let each = self.each.lock().unwrap().clone();
        (
            quantile(per_write.clone(), 0.99),
            quantile(per_write, 0.5),
            quantile(each, 0.99),
            missing,
        )
    }

    /// Whether every started write reached every client watching its ship.
    fn all_delivered(&self) -> bool {
        let n = self.started.load(Ordering::Relaxed).min(self.sent.len());
        (0..n).all(|i| {
            self.sent[i].load(Ordering::Relaxed) == 0
                || self.received[i].load(Ordering::Relaxed)
                    >= self.watching[i].load(Ordering::Relaxed)
        })
    }
}

/// What the clients report to.
struct Shared {
    /// Step 2's writes (`lat-{i}`, member `i % 9`).
    idle: Marks,
    /// The probe's writes during throughput measurements (`busy-{i}`, ship `i % 3`).
    busy: Marks,
    /// How many clients had their first event.
    ready: AtomicUsize,
    /// Per ship: how many clients are connected and had their first event.
    connected: [AtomicUsize; 3],
}

/// Counts a client as connected to its ship's page while it lives (an aborted client task
/// drops it).
struct Connected(Arc<Shared>, usize);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One SSE client: reads its stream and notes each marked write's delivery once (see the
/// module's doc on coalesced events).
async fn client(addr: SocketAddr, ship: usize, d: Arc<Shared>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /ship/{}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
        SHIPS[ship]
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let marks = [&d.idle, &d.busy];
    let mut _connected = None;
    // The first write of each kind this client watches (set once it is connected).
    let mut first = [usize::MAX; 2];
    let finders = marks.map(|m| memmem::Finder::new(m.prefix.as_bytes()));
    let mut seen = marks.map(|m| vec![false; m.sent.len()]);
    let reset = memmem::Finder::new(b"event: crew-reset");
    // Read straight into the buffer of what is not parsed yet: 1,000 clients share the
    // machine with the app, so they should not each keep (and copy through) a large one.
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut ready = false;
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let now = d.idle.now();
        // Only whole events: an SSE event ends with a blank line.
        let Some(end) = memmem::rfind(&buf, b"\n\n") else {
            continue;
        };
        let events = &buf[..end];
        if !ready && reset.find(events).is_some() {
            ready = true;
            d.connected[ship].fetch_add(1, Ordering::Relaxed);
            _connected = Some(Connected(d.clone(), ship));
            first = marks.map(|m| m.started.load(Ordering::Relaxed));
            d.ready.fetch_add(1, Ordering::Relaxed);
        }
        let kinds = marks.iter().zip(&finders).zip(&mut seen).zip(first);
        for (((m, finder), seen), first) in kinds {
            for at in finder.find_iter(events) {
                let rest = &events[at + m.prefix.len()..];
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                let parsed = std::str::from_utf8(&rest[..digits]).ok();
                if let Some(i) = parsed.and_then(|t| t.parse::<usize>().ok()) {
                    m.saw(i, now, seen, first);
                }
            }
        }
        buf.drain(..end + 2);
    }
}

/// The `q` quantile of `v` (ns) in ms.
fn quantile(mut v: Vec<u64>, q: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1;
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
        for ship in SHIPS {
            let mut probe = Crewmember::new("probe", "ensign", "human");
            probe.id = Some(Id::from(format!("probe-{ship}")));
            probe.starship_id = Some(Id::from(ship));
            probe.create(&state.db).await?;
        }
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
    d: &Arc<Shared>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    d.ready.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let clients = (0..n)
        .map(|i| tokio::spawn(client(addr, i % 3, d.clone())))
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

/// Ends the clients' streams (the app cuts them; their sockets close).
async fn disconnect(state: &AppState, clients: &mut Vec<tokio::task::JoinHandle<()>>) {
    state.disconnect_live_clients();
    clients.drain(..).for_each(|c| c.abort());
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Waits (at most 10 s) until every write of `marks` reached every client watching.
async fn settle(marks: &Marks) {
    let waited = Instant::now();
    while !marks.all_delivered() && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(
    addr: SocketAddr,
    state: AppState,
    o: Options,
) -> Result<(), Box<dyn std::error::Error>> {
    let base = Instant::now();
    let d = Arc::new(Shared {
        idle: Marks::new("lat-", MEMBERS.len(), o.latency_writes, base),
        busy: Marks::new("busy-", SHIPS.len(), MAX_PROBES, base),
        ready: AtomicUsize::new(0),
        connected: Default::default(),
    });
    let quiet = || Probe { marks: None };
    posts_per_second(addr, o.posts / 4, "warm", quiet()).await;

    // Throughput: pairs of measurements, none then with the clients in even rounds and the
    // other way round in odd ones (so that a drift of the machine's load favours neither);
    // the median of the pairs' ratios.
    let (mut ratios, mut live_cpu) = (Vec::new(), Vec::new());
    let mut clients = Vec::new();
    for round in 0..o.rounds {
        let with_first = round % 2 == 1;
        let none = if with_first {
            None
        } else {
            Some(posts_per_second(addr, o.posts, "a", quiet()).await)
        };
        clients = connect(addr, o.clients, &d).await?;
        let probe = Probe {
            marks: Some(d.clone()),
        };
        let with = posts_per_second(addr, o.posts, "b", probe).await;
        settle(&d.busy).await;
        if with_first || round + 1 < o.rounds {
            disconnect(&state, &mut clients).await;
        }
        let none = match none {
            Some(none) => none,
            None => posts_per_second(addr, o.posts, "a", quiet()).await,
        };
        println!(
            "round {round}: writes_none_per_s {:.0}, writes_with_1k_sse_per_s {:.0}, ratio {:.3} \
             (cpu ms per post {:.3} vs {:.3})",
            none.per_s,
            with.per_s,
            with.per_s / none.per_s,
            none.cpu_ms,
            with.cpu_ms
        );
        ratios.push(with.per_s / none.per_s);
        live_cpu.push((with.cpu_ms - none.cpu_ms) * with.per_s / 1e3);
    }
    // The latency writes' clients (connected until the end).
    let _clients = match clients.is_empty() {
        true => connect(addr, o.clients, &d).await?,
        false => clients,
    };

    // Latency, with the clients connected, once the last throughput events are out
    // (a page's first change after a burst may wait for its throttle window): one write at
    // a time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..o.latency_writes {
        let watching = d.connected[i % 3].load(Ordering::Relaxed);
        let Some(i) = d.idle.start(|j| j == i, watching) else {
            break;
        };
        rename(addr, MEMBERS[i % 9], &format!("lat-{i}")).await;
        tokio::time::sleep(LATENCY_GAP).await;
    }
    settle(&d.idle).await;
    let (p99, p50, single, missing) = d.idle.figures();
    println!("sse_delivery_p99_ms: {p99:.1}");
    println!("sse_delivery_p50_ms: {p50:.1}");
    println!("sse_single_delivery_p99_ms: {single:.1}");
    println!("sse_deliveries_missing: {missing}");
    let (p99, p50, single, missing) = d.busy.figures();
    println!("sse_delivery_under_load_p99_ms: {p99:.1}");
    println!("sse_delivery_under_load_p50_ms: {p50:.1}");
    println!("sse_single_delivery_under_load_p99_ms: {single:.1}");
    println!("sse_deliveries_under_load_missing: {missing}");
    println!(
        "live_clients_cpu_cores: {:.2} (median of {} pairs)",
        median(live_cpu),
        o.rounds
    );
    println!(
        "writes_with_1k_sse_vs_none: {:.3} (median of {} pairs)",
        median(ratios),
        o.rounds
    );
    Ok(())
}
