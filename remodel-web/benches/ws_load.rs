//! Load of remodel-web: 10,000 WebSocket clients on one server, side by side in one run.
//!
//! ```sh
//! cargo bench -p remodel-web --bench ws_load              # 10,000 clients (BENCHMARKS.md)
//! cargo bench -p remodel-web --bench ws_load -- --quick   # 1,000 clients, < 30 s (CI smoke)
//! ```
//!
//! The server (this process: a [`Web`] on 127.0.0.1 behind axum, a temporary database with
//! soft writes and the change log) and the clients (the same program started again with
//! `REMODEL_WS_ROLE=clients`: tokio-tungstenite sockets that read and parse every frame) run in
//! two processes, so the server's resident memory counts only the server. Both share the
//! machine's cores: every figure here pays for the clients' CPU too, which real browsers
//! would not take from the server.
//!
//! Each client `c` holds three subscriptions: `me` (a point feed on its own row `p{c}` of
//! `players`), `group` (a `get_all` on the `group` index: the 100 rows of its group `g{c/100}`,
//! shared by the 100 clients of that group) and `board` (the whole of a 10-row table, shared by
//! every client). Writes update one random player row (1 + 100 subscriptions: the row's own
//! client and its group), and every 50th write a board row instead (every client).
//!
//! `REMODEL_WS_SUBS=me,board` keeps only those subscriptions; `REMODEL_WS_WINDOW_MS=250` runs
//! the judged phase with another window; `REMODEL_WS_WRITER_CPU=1` prints the writer thread's
//! share of a core in each burst.
//!
//! Figures, one JSON object a line on stdout (`name`, `value`, `unit`, `target`, `met`, and
//! the raw inputs); a table on stderr:
//!
//! - `ws_delivery_p99_ms` / `_p50_ms`: writes at a steady rate, from each write's commit
//!   acknowledgement (the writer's `await` returned) until the last of its subscriptions, in
//!   every subscribed client, received it (a later state of the same row counts); p50/p99
//!   over writes. Measured with the Web's default coalescing window (50 ms) and with 0.
//!   (`client_frames` in the inputs counts WebSocket messages: a `batch` of several
//!   subscriptions' changes is one.)
//! - `writes_with_10k_ws_vs_none`: one writer's soft writes per second with the clients
//!   connected, subscribed and reading ÷ the same writes with no client (the mean of the runs
//!   before and after the clients).
//! - `ws_client_bytes`: the heap the server holds (allocated and not freed, counted by this
//!   program's global allocator) after the clients connected and subscribed and went idle,
//!   minus before, ÷ clients. `ws_client_rss_bytes` is the same from the resident set size,
//!   which also holds what the allocator kept after transient peaks (each subscription reads
//!   its initial rows as documents of its own before it frees them).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::serve::ListenerExt;
use futures::{SinkExt, StreamExt};
use remodel::{json, ChangeLogRetention, Config, Database, Durability, IndexSpec, Value};
use remodel_web::{Live, Web};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Clients (and player rows) per group.
const GROUP: usize = 100;
/// Rows of the shared board.
const BOARD_ROWS: u64 = 10;
/// Every this many writes, one goes to the board (seen by every client).
const BOARD_EVERY: u64 = 50;
/// Row numbers of the board, after the players'.
const BOARD_BASE: u32 = 1 << 24;
/// Rows of a table no client watches.
const UNWATCHED_ROWS: u64 = 1000;
/// Subscription ids of a client.
const SUB_ME: u8 = 1;
const SUB_GROUP: u8 = 2;
const SUB_BOARD: u8 = 3;

fn main() {
    let (soft, hard) = raise_nofile();
    if std::env::var("REMODEL_WS_ROLE").as_deref() == Ok("clients") {
        clients::main();
        return;
    }
    eprintln!("open files: soft limit {soft}, hard {hard}");
    server::main();
}

/// Raises the soft limit of open files to the hard limit; returns both.
fn raise_nofile() -> (u64, u64) {
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        (lim.rlim_cur, lim.rlim_max)
    }
}

/// The CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for both processes.
fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Counts the bytes the program has allocated and not freed: what the server holds, unlike
/// its resident set, which also keeps what the allocator retained after transient peaks
/// (each subscription reads its initial rows as documents of its own, then frees them).
///
/// Each thread counts in a slot of its own (a cache line each; threads past [`SLOTS`] share
/// them): one counter for all was one cache line that every allocation of every thread
/// wrote, and moving it between the cores made the server's allocations, and so the writer
/// and the delivery it measures, slower with the clients than without.
struct Counting;

const SLOTS: usize = 64;

#[repr(align(128))]
struct Slot(AtomicI64);

static LIVE_HEAP: [Slot; SLOTS] = [const { Slot(AtomicI64::new(0)) }; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot (`usize::MAX` until its first allocation). No destructor and no
    /// allocation: it may be used inside the allocator (on targets with native thread-local
    /// storage, as Linux, which this bench needs for `/proc` anyway).
    static MY_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

fn my_slot() -> &'static AtomicI64 {
    let i = MY_SLOT
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS);
            }
            s.get()
        })
        .unwrap_or(0);
    &LIVE_HEAP[i].0
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only
// observe sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        my_slot().fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        my_slot().fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        my_slot().fetch_add(new as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated and not freed, over every thread (a thread may free what another
/// allocated: only the sum means anything).
fn heap_bytes() -> u64 {
    LIVE_HEAP
        .iter()
        .map(|s| s.0.load(Ordering::Relaxed))
        .sum::<i64>()
        .max(0) as u64
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// User + system CPU time of process `pid` (`self` for this one), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14 and stime 15: indexes 11 and 12 counting from the state.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Parses a row key (`p17`, `b3`) into its row number.
fn row_number(key: &str) -> Option<u32> {
    let (kind, n) = key.split_at(1);
    let n: u32 = n.parse().ok()?;
    match kind {
        "p" => Some(n),
        "b" => Some(BOARD_BASE + n),
        _ => None,
    }
}

mod server {
    use super::*;

    /// Anyone may watch: the load is the connections, not the identity check.
    #[derive(Clone)]
    pub struct Anyone;

    impl<S: Send + Sync> FromRequestParts<S> for Anyone {
        type Rejection = Infallible;
        async fn from_request_parts(_: &mut Parts, _: &S) -> Result<Self, Infallible> {
            Ok(Anyone)
        }
    }

    #[derive(Deserialize)]
    struct Me {
        id: String,
    }

    #[derive(Deserialize)]
    struct Group {
        group: String,
    }

    struct Opts {
        clients: usize,
        latency_secs: u64,
        rate: u64,
        burst_writes: usize,
        reps: usize,
        /// How long clients are left alone before memory is read, and after each burst.
        settle: Duration,
        memory_only: bool,
        /// Measures only the store's feeds, as remodel-web opens them (no WebSocket).
        feed_memory: bool,
        /// The subscriptions of each client (all three unless `REMODEL_WS_SUBS` names some).
        subs: Vec<&'static str>,
    }

    fn web(db: &Database, window: Option<Duration>) -> Web<Anyone> {
        let mut b = Web::<Anyone>::builder(db.clone())
            .publish("me", |c, p: Me| async move {
                Ok(Live::new(
                    c.db.table("players").get(p.id.as_str()).changes(),
                ))
            })
            .publish("group", |c, p: Group| async move {
                let rows = c.db.table("players").get_all([p.group.as_str()]);
                // The same rows for every client of the group: one feed for them all.
                Ok(Live::new(rows.index("group").changes())
                    .sort_by("id")
                    .shared())
            })
            .publish("board", |c, (): ()| async move {
                Ok(Live::new(c.db.table("board").query().changes())
                    .sort_by("id")
                    .shared())
            });
        if let Some(w) = window {
            b = b.window(w);
        }
        b.build()
    }

    async fn serve(web: &Web<Anyone>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // What a live server should do: small frames go out at once, not behind Nagle.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let router = axum::Router::new().merge(web.router());
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// The writes of every phase: one sequence, so that every write's `w` is unique.
    struct Writer {
        db: Database,
        players: usize,
        seq: u64,
        rng: u64,
    }

    impl Writer {
        fn next_rand(&mut self) -> u64 {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// One write; returns its `w` and its row number.
        async fn write(&mut self) -> (u64, u32) {
            self.seq += 1;
            let w = self.seq;
            if w.is_multiple_of(BOARD_EVERY) {
                let j = (w / BOARD_EVERY) % BOARD_ROWS;
                self.db
                    .table("board")
                    .get(format!("b{j}"))
                    .update(json!({"w": w}))
                    .await
                    .unwrap();
                (w, BOARD_BASE + j as u32)
            } else {
                let i = (self.next_rand() % self.players as u64) as u32;
                let score = self.next_rand() % 1000;
                self.db
                    .table("players")
                    .get(format!("p{i}"))
                    .update(json!({"w": w, "score": score}))
                    .await
                    .unwrap();
                (w, i)
            }
        }

        /// `n` updates of a table no client watches, one after the other; returns writes
        /// per second.
        async fn burst_unwatched(&mut self, n: usize) -> f64 {
            let start = std::time::Instant::now();
            for _ in 0..n {
                self.seq += 1;
                let i = self.next_rand() % UNWATCHED_ROWS;
                self.db
                    .table("other")
                    .get(format!("o{i}"))
                    .update(json!({"w": self.seq}))
                    .await
                    .unwrap();
            }
            n as f64 / start.elapsed().as_secs_f64()
        }

        /// `n` writes one after the other; returns writes per second.
        async fn burst(&mut self, n: usize) -> f64 {
            let start = std::time::Instant::now();
            let cpu = thread_cpu_ns();
            for _ in 0..n {
                self.write().await;
            }
            let wall = start.elapsed().as_secs_f64();
            if std::env::var_os("REMODEL_WS_WRITER_CPU").is_some() {
                let cpu = (thread_cpu_ns() - cpu) as f64 / 1e9;
                eprintln!(
                    "writer: {:.0}/s, on a core {:.0}% of the time",
                    n as f64 / wall,
                    100.0 * cpu / wall
                );
            }
            n as f64 / wall
        }
    }

    /// The clients' process, driven by one command a line.
    struct Clients {
        child: tokio::process::Child,
        pid: String,
        stdin: tokio::process::ChildStdin,
        lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    }

    impl Clients {
        async fn start(addr: SocketAddr, n: usize) -> Clients {
            let exe = std::env::current_exe().unwrap();
            let mut child = tokio::process::Command::new(exe)
                .env("REMODEL_WS_ROLE", "clients")
                .env("REMODEL_WS_ADDR", addr.to_string())
                .env("REMODEL_WS_CLIENTS", n.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("the clients' process starts");
            let pid = child.id().unwrap().to_string();
            let stdin = child.stdin.take().unwrap();
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            Clients {
                child,
                pid,
                stdin,
                lines,
            }
        }

        async fn send(&mut self, text: &str) {
            self.stdin.write_all(text.as_bytes()).await.unwrap();
            self.stdin.flush().await.unwrap();
        }

        async fn line(&mut self) -> String {
            self.lines
                .next_line()
                .await
                .unwrap()
                .expect("the clients' process answers")
        }

        async fn cmd(&mut self, command: &str) -> String {
            self.send(&format!("{command}\n")).await;
            self.line().await
        }

        fn cpu(&self) -> f64 {
            cpu_seconds(&self.pid)
        }

        /// Waits until both processes are idle (what earlier writes sent has been read):
        /// under a tenth of a core each over 300 ms, for at most 60 s. Returns the seconds.
        async fn quiesce(&self) -> f64 {
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                let (s0, c0) = (cpu_seconds("self"), self.cpu());
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (s, c) = (cpu_seconds("self") - s0, self.cpu() - c0);
                if s < 0.03 && c < 0.03 {
                    break;
                }
            }
            t.elapsed().as_secs_f64()
        }

        /// Per write: the latest first receipt over its subscriptions minus its ack, and
        /// how many subscriptions never got it.
        async fn report(&mut self, log: &[(u64, u32, u64)]) -> Vec<(i64, usize)> {
            let mut text = format!("report {}\n", log.len());
            for (w, row, ack) in log {
                text.push_str(&format!("{w} {row} {ack}\n"));
            }
            self.send(&text).await;
            let mut out = Vec::with_capacity(log.len());
            for _ in 0..log.len() {
                let l = self.line().await;
                let mut f = l.split_whitespace();
                let lat: i64 = f.next().unwrap().parse().unwrap();
                let missing: usize = f.next().unwrap().parse().unwrap();
                out.push((lat, missing));
            }
            out
        }

        async fn quit(mut self) {
            let _ = self.cmd("quit").await;
            let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        }
    }

    fn field(line: &str, i: usize) -> f64 {
        line.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    fn percentile(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// Waits until the clients' subscriptions are gone (their connections may linger, idle,
    /// see BENCHMARKS.md); returns how many connections were still counted then.
    async fn wait_closed(web: &Web<Anyone>) -> usize {
        for _ in 0..300 {
            let s = web.stats();
            if s.subscriptions == 0 {
                return s.connections;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("warning: subscriptions still open: {:?}", web.stats());
        web.stats().connections
    }

    /// What one window's phase measured.
    struct Phase {
        window_ms: u64,
        connect_s: f64,
        subscribe_s: f64,
        rss_before: u64,
        rss_connected: u64,
        rss_subscribed: u64,
        rss_trimmed: u64,
        heap_before: u64,
        heap_connected: u64,
        heap_subscribed: u64,
        delivery: Delivery,
        with_rates: Vec<f64>,
        with_unwatched: Vec<f64>,
        lingering: usize,
        extra: Value,
    }

    #[derive(Default)]
    struct Delivery {
        /// Milliseconds per write, all writes delivered to every subscription.
        all: Vec<f64>,
        rows: Vec<f64>,
        board: Vec<f64>,
        missing_writes: usize,
        missing_deliveries: usize,
        writes: usize,
        server_cores: f64,
        client_cores: f64,
        seconds: f64,
    }

    async fn latency(writer: &mut Writer, clients: &mut Clients, opts: &Opts) -> Delivery {
        assert_eq!(clients.cmd("clear").await, "cleared");
        let count = (opts.rate * opts.latency_secs) as usize;
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / opts.rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log = Vec::with_capacity(count);
        let (cpu0, ccpu0, t0) = (cpu_seconds("self"), clients.cpu(), now_ns());
        for _ in 0..count {
            tick.tick().await;
            let (w, row) = writer.write().await;
            log.push((w, row, now_ns()));
        }
        let secs = (now_ns() - t0) as f64 / 1e9;
        let (server_cores, client_cores) = (
            (cpu_seconds("self") - cpu0) / secs,
            (clients.cpu() - ccpu0) / secs,
        );
        // Whatever is late arrives, or is missing.
        tokio::time::sleep(opts.settle * 2).await;
        let got = clients.report(&log).await;
        let mut d = Delivery {
            writes: count,
            server_cores,
            client_cores,
            seconds: secs,
            ..Delivery::default()
        };
        for ((_, row, _), (lat, missing)) in log.iter().zip(got) {
            if missing > 0 {
                d.missing_writes += 1;
                d.missing_deliveries += missing;
                continue;
            }
            let ms = lat as f64 / 1e6;
            d.all.push(ms);
            if *row >= BOARD_BASE {
                d.board.push(ms);
            } else {
                d.rows.push(ms);
            }
        }
        for v in [&mut d.all, &mut d.rows, &mut d.board] {
            v.sort_by(f64::total_cmp);
        }
        d
    }

    /// The same writes with no client connected: to the watched tables, and to the one no
    /// client watches.
    async fn none(writer: &mut Writer, opts: &Opts) -> (Vec<f64>, Vec<f64>) {
        let (mut r, mut u) = (Vec::new(), Vec::new());
        for _ in 0..opts.reps {
            r.push(writer.burst(opts.burst_writes).await);
            u.push(writer.burst_unwatched(opts.burst_writes).await);
        }
        (r, u)
    }

    async fn phase(
        writer: &mut Writer,
        web: &Web<Anyone>,
        addr: SocketAddr,
        window_ms: u64,
        opts: &Opts,
    ) -> Phase {
        let n = opts.clients;
        tokio::time::sleep(opts.settle / 2).await;
        let (rss_before, heap_before) = (rss_bytes(), heap_bytes());
        let mut clients = Clients::start(addr, n).await;
        let t = std::time::Instant::now();
        let connected = clients.cmd("connect").await;
        let connect_s = t.elapsed().as_secs_f64();
        assert_eq!(
            field(&connected, 2),
            0.0,
            "every client connects: {connected}"
        );
        tokio::time::sleep(opts.settle / 2).await;
        let (rss_connected, heap_connected) = (rss_bytes(), heap_bytes());
        let t = std::time::Instant::now();
        let subscribed = clients.cmd("subscribe").await;
        let subscribe_s = t.elapsed().as_secs_f64();
        let stats = web.stats();
        assert_eq!(stats.connections, n, "{subscribed}");
        assert_eq!(stats.subscriptions, opts.subs.len() * n, "{subscribed}");
        // Idle: what each client costs while nothing happens.
        tokio::time::sleep(opts.settle).await;
        let (rss_subscribed, heap_subscribed) = (rss_bytes(), heap_bytes());
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe { libc::malloc_trim(0) };
        let rss_trimmed = rss_bytes();
        eprintln!(
            "window {window_ms} ms: {n} clients connected in {connect_s:.1} s, subscribed in \
             {subscribe_s:.1} s; server RSS {:.1} → {:.1} → {:.1} MiB (after malloc_trim {:.1})",
            rss_before as f64 / 1048576.0,
            rss_connected as f64 / 1048576.0,
            rss_subscribed as f64 / 1048576.0,
            rss_trimmed as f64 / 1048576.0
        );
        let mut phase = Phase {
            window_ms,
            connect_s,
            subscribe_s,
            rss_before,
            rss_connected,
            rss_subscribed,
            rss_trimmed,
            heap_before,
            heap_connected,
            heap_subscribed,
            delivery: Delivery::default(),
            with_rates: Vec::new(),
            with_unwatched: Vec::new(),
            lingering: 0,
            extra: Value::Null,
        };
        if opts.memory_only {
            if std::env::var_os("REMODEL_WS_EXIT_IDLE").is_some() {
                // For a heap profiler: what is still allocated at exit is what the idle
                // clients hold.
                std::process::exit(0);
            }
            clients.quit().await;
            wait_closed(web).await;
            return phase;
        }

        phase.delivery = latency(writer, &mut clients, opts).await;
        let d = &phase.delivery;
        eprintln!(
            "window {window_ms} ms: delivery of {} writes p50 {:.1} ms p99 {:.1} ms (missing {})",
            d.writes,
            percentile(&d.all, 50.0),
            percentile(&d.all, 99.0),
            d.missing_writes
        );

        let (mut cpu, mut ccpu, mut secs, mut drain) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..opts.reps {
            clients.quiesce().await;
            phase
                .with_unwatched
                .push(writer.burst_unwatched(opts.burst_writes).await);
            clients.quiesce().await;
            let (c0, cc0, t0) = (cpu_seconds("self"), clients.cpu(), now_ns());
            phase.with_rates.push(writer.burst(opts.burst_writes).await);
            // Until the clients have read what the burst sent.
            drain += clients.quiesce().await;
            cpu += cpu_seconds("self") - c0;
            ccpu += clients.cpu() - cc0;
            secs += (now_ns() - t0) as f64 / 1e9;
        }
        let stats_line = clients.cmd("stats").await;
        eprintln!(
            "window {window_ms} ms: writes/s with clients {:.0?} (to a table no client watches \
             {:.0?}); clients: {stats_line}",
            phase.with_rates, phase.with_unwatched
        );
        let t = std::time::Instant::now();
        clients.quit().await;
        phase.lingering = wait_closed(web).await;
        eprintln!(
            "window {window_ms} ms: clients quit; subscriptions gone after {:.1} s, {} connections \
             still counted then",
            t.elapsed().as_secs_f64(),
            phase.lingering
        );
        // What is left running once every client is gone (the writer's rate after a phase is
        // compared with its rate before).
        let feeds = writer.db.stats().run().await.map_or(-1, |rows| {
            rows.first().and_then(|r| r["feeds"].as_i64()).unwrap_or(-1)
        });
        let s0 = cpu_seconds("self");
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "window {window_ms} ms: after the clients quit: {} shared results, {feeds} feeds open; \
             over 1 s idle the server used {:.2} s of CPU",
            web.stats().shared_results,
            cpu_seconds("self") - s0
        );
        phase.extra = json!({
            "client_frames": field(&stats_line, 1),
            "client_bytes_received": field(&stats_line, 2),
            "resyncs": field(&stats_line, 3),
            "ends": field(&stats_line, 4),
            "errors_or_closed": field(&stats_line, 5),
            "bursts_cpu_seconds_server": round(cpu),
            "bursts_cpu_seconds_clients": round(ccpu),
            "bursts_wall_seconds_until_read": round(secs),
            "bursts_drain_seconds": round(drain),
        });
        phase
    }

    struct Figure {
        name: String,
        value: f64,
        unit: &'static str,
        target: Option<(&'static str, f64)>,
        inputs: Value,
        what: String,
    }

    impl Figure {
        fn met(&self) -> Option<bool> {
            self.target.map(|(op, t)| match op {
                "<=" => self.value <= t,
                _ => self.value >= t,
            })
        }
    }

    fn round(v: f64) -> f64 {
        if v.abs() >= 100.0 {
            (v * 10.0).round() / 10.0
        } else {
            (v * 1000.0).round() / 1000.0
        }
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let arg = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse::<usize>().ok())
        };
        let subs: Vec<&'static str> = match std::env::var("REMODEL_WS_SUBS") {
            Ok(list) => ["me", "group", "board"]
                .into_iter()
                .filter(|s| list.split(',').any(|l| l == *s))
                .collect(),
            Err(_) => vec!["me", "group", "board"],
        };
        let mut opts = Opts {
            clients: if quick { 1_000 } else { 10_000 },
            latency_secs: if quick { 2 } else { 10 },
            rate: 100,
            burst_writes: if quick { 2_000 } else { 5_000 },
            reps: if quick { 2 } else { 3 },
            settle: Duration::from_secs(if quick { 1 } else { 2 }),
            memory_only: args.iter().any(|a| a == "--memory-only"),
            feed_memory: args.iter().any(|a| a == "--feed-memory"),
            subs,
        };
        if let Some(n) = arg("--clients") {
            opts.clients = n;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(opts));
    }

    /// The live heap one store feed holds once its initial rows were read, per kind of the
    /// clients' subscriptions, opened as remodel-web opens them: the part of
    /// `ws_client_bytes` that is the store's.
    async fn feed_memory(db: &Database, n: usize) {
        use futures::StreamExt;
        for kind in ["me", "group", "board"] {
            let before = heap_bytes();
            let mut feeds = Vec::with_capacity(n);
            for c in 0..n {
                let changes = match kind {
                    "me" => db.table("players").get(format!("p{c}")).changes(),
                    "group" => db
                        .table("players")
                        .get_all([format!("g{}", c / GROUP).as_str()])
                        .index("group")
                        .changes(),
                    _ => db.table("board").query().changes(),
                };
                let mut feed = changes
                    .queue_size(1024)
                    .include_initial(true)
                    .include_states(true)
                    .await
                    .unwrap();
                while let Some(Ok(item)) = feed.next().await {
                    if item.state() == Some(remodel::FeedState::Ready) {
                        break;
                    }
                }
                feeds.push(feed);
            }
            let per = (heap_bytes() as f64 - before as f64) / n as f64;
            println!(
                "{}",
                json!({"name": "feed_bytes", "kind": kind, "feeds": n, "value": per.round()})
            );
            drop(feeds);
        }
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    async fn run(opts: Opts) {
        let started = std::time::Instant::now();
        let load_at_start = loadavg();
        let n = opts.clients;
        let db = Config::temporary()
            .durability(Durability::Soft)
            .change_log(ChangeLogRetention::default())
            .open()
            .await
            .unwrap();
        for t in ["players", "board", "other"] {
            db.create_table(t).await.unwrap();
        }
        db.table("players")
            .create_index("group", IndexSpec::field("group"))
            .await
            .unwrap();
        let players: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": format!("p{i}"), "group": format!("g{}", i / GROUP),
                       "name": format!("Player {i}"), "score": 0, "w": 0})
            })
            .collect();
        for chunk in players.chunks(1000) {
            db.table("players")
                .insert_many(chunk.to_vec())
                .await
                .unwrap();
        }
        let board: Vec<Value> = (0..BOARD_ROWS)
            .map(|j| json!({"id": format!("b{j}"), "text": format!("notice {j}"), "w": 0}))
            .collect();
        db.table("board").insert_many(board).await.unwrap();
        let other: Vec<Value> = (0..UNWATCHED_ROWS)
            .map(|i| json!({"id": format!("o{i}"), "name": format!("Other {i}"), "w": 0}))
            .collect();
        db.table("other").insert_many(other).await.unwrap();

        // The judged phase runs with the Web's default window, unless REMODEL_WS_WINDOW_MS
        // sets another (to see what a window changes; the figures' names stay).
        let window = std::env::var("REMODEL_WS_WINDOW_MS").ok();
        let web50 = web(
            &db,
            window
                .and_then(|m| m.parse().ok())
                .map(Duration::from_millis),
        );
        let web0 = web(&db, Some(Duration::ZERO));
        let addr50 = serve(&web50).await;
        let addr0 = serve(&web0).await;
        let mut writer = Writer {
            db: db.clone(),
            players: n,
            seq: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        };
        // Warm up: the first writes open the trees and fill caches.
        writer.burst(opts.burst_writes).await;
        writer.burst_unwatched(opts.burst_writes).await;

        if opts.feed_memory {
            feed_memory(&db, n).await;
            return;
        }
        if opts.memory_only {
            let p = phase(&mut writer, &web50, addr50, 50, &opts).await;
            let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
            println!(
                "{}",
                json!({"name": "ws_client_bytes", "subs": opts.subs, "clients": n,
                       "value": per(p.rss_subscribed, p.rss_before).round(),
                       "connection_bytes_per_client": per(p.rss_connected, p.rss_before).round(),
                       "subscriptions_bytes_per_client": per(p.rss_subscribed, p.rss_connected).round(),
                       "after_trim_bytes_per_client": per(p.rss_trimmed, p.rss_before).round(),
                       "heap_bytes_per_client": per(p.heap_subscribed, p.heap_before).round(),
                       "heap_connection_bytes_per_client": per(p.heap_connected, p.heap_before).round(),
                       "heap_subscriptions_bytes_per_client": per(p.heap_subscribed, p.heap_connected).round()})
            );
            return;
        }

        let none_a = none(&mut writer, &opts).await;
        eprintln!(
            "writes/s with no client: {:.0?} (unwatched {:.0?})",
            none_a.0, none_a.1
        );
        let p50 = phase(&mut writer, &web50, addr50, 50, &opts).await;
        let none_b = none(&mut writer, &opts).await;
        eprintln!(
            "writes/s with no client: {:.0?} (unwatched {:.0?})",
            none_b.0, none_b.1
        );
        let p0 = phase(&mut writer, &web0, addr0, 0, &opts).await;
        let none_c = none(&mut writer, &opts).await;
        eprintln!(
            "writes/s with no client: {:.0?} (unwatched {:.0?})",
            none_c.0, none_c.1
        );

        let mut figs = Vec::new();
        let label = if n == 10_000 {
            "10k".to_string()
        } else {
            n.to_string()
        };
        for (p, before, after) in [(&p50, &none_a, &none_b), (&p0, &none_b, &none_c)] {
            let suffix = if p.window_ms == 50 { "" } else { "_window0" };
            let judged = p.window_ms == 50;
            let d = &p.delivery;
            let inputs = json!({
                "window_ms": p.window_ms,
                "clients": n,
                "subscriptions_per_client": opts.subs.len(),
                "writes": d.writes,
                "rate_per_s": opts.rate,
                "board_write_every": BOARD_EVERY,
                "delivered_writes": d.all.len(),
                "missing_writes": d.missing_writes,
                "missing_deliveries": d.missing_deliveries,
                "row_writes_p50_ms": round(percentile(&d.rows, 50.0)),
                "row_writes_p99_ms": round(percentile(&d.rows, 99.0)),
                "row_writes_max_ms": round(d.rows.last().copied().unwrap_or(f64::NAN)),
                "board_writes": d.board.len(),
                "board_writes_p50_ms": round(percentile(&d.board, 50.0)),
                "board_writes_max_ms": round(d.board.last().copied().unwrap_or(f64::NAN)),
                "all_max_ms": round(d.all.last().copied().unwrap_or(f64::NAN)),
                "server_cores": round(d.server_cores),
                "client_cores": round(d.client_cores),
                "seconds": round(d.seconds),
            });
            figs.push(Figure {
                name: format!("ws_delivery_p50_ms{suffix}"),
                value: percentile(&d.all, 50.0),
                unit: "ms",
                target: None,
                inputs: inputs.clone(),
                what: format!(
                    "window {} ms: {} writes at {}/s ({} to the board, the rest to player rows), \
                     from commit ack until the last subscribed client has it",
                    p.window_ms,
                    d.writes,
                    opts.rate,
                    d.writes as u64 / BOARD_EVERY
                ),
            });
            figs.push(Figure {
                name: format!("ws_delivery_p99_ms{suffix}"),
                value: percentile(&d.all, 99.0),
                unit: "ms",
                target: if judged { Some(("<=", 100.0)) } else { None },
                inputs,
                what: format!(
                    "window {} ms, the same writes: player rows (101 subscriptions) p99 {:.1} ms; \
                     board (all {} clients) p50 {:.1}, max {:.1} ms; {} missing",
                    p.window_ms,
                    percentile(&d.rows, 99.0),
                    n,
                    percentile(&d.board, 50.0),
                    d.board.last().copied().unwrap_or(f64::NAN),
                    d.missing_writes
                ),
            });
            let with = median(p.with_rates.clone());
            let without = (median(before.0.clone()) + median(after.0.clone())) / 2.0;
            let with_u = median(p.with_unwatched.clone());
            let without_u = (median(before.1.clone()) + median(after.1.clone())) / 2.0;
            let r = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
            let mut inputs = json!({
                "window_ms": p.window_ms,
                "clients": n,
                "writes_per_run": opts.burst_writes,
                "with_clients_per_s": r(&p.with_rates),
                "no_clients_per_s_before": r(&before.0),
                "no_clients_per_s_after": r(&after.0),
                "with_median_per_s": with.round(),
                "none_mean_of_medians_per_s": without.round(),
                "unwatched_with_clients_per_s": r(&p.with_unwatched),
                "unwatched_no_clients_per_s": r(&before.1.iter().chain(&after.1).copied().collect::<Vec<_>>()),
                "unwatched_ratio": round(with_u / without_u),
                "connections_still_counted_after_quit": p.lingering,
            });
            if let (Value::Object(a), Value::Object(b)) = (&mut inputs, &p.extra) {
                a.extend(b.clone());
            }
            figs.push(Figure {
                name: format!("writes_with_{label}_ws_vs_none{suffix}"),
                value: with / without,
                unit: "ratio",
                target: if judged { Some((">=", 0.7)) } else { None },
                inputs,
                what: format!(
                    "window {} ms: one writer's soft updates ({} a run, each to 101 subscriptions, \
                     every 50th to all): {:.0}/s with the clients reading vs {:.0}/s with none; \
                     updates of a table no client watches: {:.2}",
                    p.window_ms,
                    opts.burst_writes,
                    with,
                    without,
                    with_u / without_u
                ),
            });
        }
        let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
        let m = &p50;
        figs.push(Figure {
            name: "ws_client_bytes".into(),
            value: per(m.heap_subscribed, m.heap_before),
            unit: "bytes",
            target: Some(("<=", 16384.0)),
            inputs: json!({
                "clients": n,
                "heap_connection_bytes_per_client": per(m.heap_connected, m.heap_before).round(),
                "heap_subscriptions_bytes_per_client": per(m.heap_subscribed, m.heap_connected).round(),
                "rss_bytes_per_client": per(m.rss_subscribed, m.rss_before).round(),
            }),
            what: format!(
                "live heap the server holds per idle client with {} subscriptions (allocated \
                 and not freed, counted by the bench's allocator): connection {:.0} + \
                 subscriptions {:.0}",
                opts.subs.len(),
                per(m.heap_connected, m.heap_before),
                per(m.heap_subscribed, m.heap_connected)
            ),
        });
        figs.push(Figure {
            name: "ws_client_rss_bytes".into(),
            value: per(m.rss_subscribed, m.rss_before),
            unit: "bytes",
            target: None,
            inputs: json!({
                "clients": n,
                "rss_before": m.rss_before,
                "rss_connected": m.rss_connected,
                "rss_subscribed_idle": m.rss_subscribed,
                "rss_after_malloc_trim": m.rss_trimmed,
                "connection_bytes_per_client": per(m.rss_connected, m.rss_before).round(),
                "subscriptions_bytes_per_client": per(m.rss_subscribed, m.rss_connected).round(),
                "after_trim_bytes_per_client": per(m.rss_trimmed, m.rss_before).round(),
                "connect_seconds": round(m.connect_s),
                "subscribe_seconds": round(m.subscribe_s),
                "window0_phase_bytes_per_client": per(p0.rss_subscribed, p0.rss_before).round(),
            }),
            what: format!(
                "server RSS per idle client with {} subscriptions: connection {:.0} + \
                 subscriptions {:.0} (after malloc_trim {:.0} in all)",
                opts.subs.len(),
                per(m.rss_connected, m.rss_before),
                per(m.rss_subscribed, m.rss_connected),
                per(m.rss_trimmed, m.rss_before)
            ),
        });

        eprintln!();
        eprintln!("| metric | value | unit | target | met | what |");
        eprintln!("|---|---:|---|---|---|---|");
        for f in &figs {
            let mut obj = json!({
                "name": f.name,
                "value": round(f.value),
                "unit": f.unit,
                "target": f.target.map(|(op, t)| format!("{op} {t}")),
                "met": f.met(),
            });
            if let (Value::Object(o), Value::Object(i)) = (&mut obj, &f.inputs) {
                o.extend(i.clone());
            }
            println!("{obj}");
            let (target, met) = match (f.target, f.met()) {
                (Some((op, t)), Some(m)) => (
                    format!("{} {t}", if op == "<=" { "≤" } else { "≥" }),
                    if m { "yes" } else { "**no**" }.to_string(),
                ),
                _ => ("—".into(), "—".into()),
            };
            eprintln!(
                "| `{}` | {:.3} | {} | {} | {} | {} |",
                f.name, f.value, f.unit, target, met, f.what
            );
        }
        eprintln!(
            "total {:.1} s; load average at start {load_at_start}, at end {}",
            started.elapsed().as_secs_f64(),
            loadavg()
        );
        println!(
            "{}",
            json!({"name": "machine", "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                   "loadavg_start": load_at_start, "loadavg_end": loadavg(),
                   "seconds": round(started.elapsed().as_secs_f64())})
        );
    }
}

mod clients {
    use super::*;
    use tokio::sync::{watch, Notify, Semaphore};

    /// A row state a client received: subscription, row number, its `w`, when.
    #[derive(Clone, Copy)]
    struct Rec {
        sub: u8,
        row: u32,
        w: u32,
        t: u64,
    }

    #[derive(Default)]
    struct Counters {
        connected: AtomicUsize,
        failed: AtomicUsize,
        subscribed: AtomicUsize,
        frames: AtomicU64,
        bytes: AtomicU64,
        resyncs: AtomicU64,
        ends: AtomicU64,
        gone: AtomicU64,
        changed: Notify,
    }

    /// What the driver asks of every client.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Cmd {
        Wait,
        Subscribe,
        Quit,
    }

    pub fn main() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run());
    }

    async fn run() {
        let addr: SocketAddr = std::env::var("REMODEL_WS_ADDR").unwrap().parse().unwrap();
        let n: usize = std::env::var("REMODEL_WS_CLIENTS")
            .unwrap()
            .parse()
            .unwrap();
        let counters = Arc::new(Counters::default());
        let recs: Arc<Vec<Mutex<Vec<Rec>>>> =
            Arc::new((0..n).map(|_| Mutex::new(Vec::new())).collect());
        let (cmd_tx, cmd_rx) = watch::channel(Cmd::Wait);
        let mut tasks = Vec::new();
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        while let Ok(Some(line)) = stdin.next_line().await {
            let mut words = line.split_whitespace();
            let answer = match words.next().unwrap_or("") {
                "connect" => {
                    let gate = Arc::new(Semaphore::new(200));
                    for c in 0..n {
                        let (counters, recs, cmd, gate) =
                            (counters.clone(), recs.clone(), cmd_rx.clone(), gate.clone());
                        tasks.push(tokio::spawn(client(c, addr, counters, recs, cmd, gate)));
                    }
                    wait_for(&counters, |c| {
                        c.connected.load(Ordering::Acquire) + c.failed.load(Ordering::Acquire) >= n
                    })
                    .await;
                    format!(
                        "connected {} {}",
                        counters.connected.load(Ordering::Acquire),
                        counters.failed.load(Ordering::Acquire)
                    )
                }
                "subscribe" => {
                    cmd_tx.send_replace(Cmd::Subscribe);
                    let ok = tokio::time::timeout(
                        Duration::from_secs(300),
                        wait_for(&counters, |c| c.subscribed.load(Ordering::Acquire) >= n),
                    )
                    .await
                    .is_ok();
                    format!(
                        "subscribed {} {}",
                        counters.subscribed.load(Ordering::Acquire),
                        if ok { "ok" } else { "timeout" }
                    )
                }
                "clear" => {
                    for r in recs.iter() {
                        r.lock().unwrap().clear();
                    }
                    "cleared".to_string()
                }
                "report" => {
                    let k: usize = words.next().unwrap().parse().unwrap();
                    let mut log = Vec::with_capacity(k);
                    for _ in 0..k {
                        let l = stdin.next_line().await.unwrap().unwrap();
                        let v: Vec<u64> =
                            l.split_whitespace().map(|x| x.parse().unwrap()).collect();
                        log.push((v[0], v[1] as u32, v[2]));
                    }
                    report(&recs, n, &log)
                }
                "stats" => format!(
                    "stats {} {} {} {} {}",
                    counters.frames.load(Ordering::Relaxed),
                    counters.bytes.load(Ordering::Relaxed),
                    counters.resyncs.load(Ordering::Relaxed),
                    counters.ends.load(Ordering::Relaxed),
                    counters.gone.load(Ordering::Relaxed),
                ),
                "quit" => {
                    cmd_tx.send_replace(Cmd::Quit);
                    let all = futures::future::join_all(tasks.drain(..));
                    let _ = tokio::time::timeout(Duration::from_secs(15), all).await;
                    stdout.write_all(b"bye\n").await.unwrap();
                    stdout.flush().await.unwrap();
                    return;
                }
                other => format!("unknown {other}"),
            };
            stdout.write_all(answer.as_bytes()).await.unwrap();
            stdout.write_all(b"\n").await.unwrap();
            stdout.flush().await.unwrap();
        }
    }

    async fn wait_for(counters: &Counters, done: impl Fn(&Counters) -> bool) {
        loop {
            let changed = counters.changed.notified();
            if done(counters) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
        }
    }

    /// Per write `(w, row, ack)`: over every subscription of every client that shows `row`,
    /// the first receipt of that row at `w` or later; the latest of those minus the ack, in
    /// nanoseconds, and how many subscriptions never got it.
    fn report(recs: &[Mutex<Vec<Rec>>], n: usize, log: &[(u64, u32, u64)]) -> String {
        // Per client: (sub, row) → receipts sorted by w, with the earliest time of any
        // receipt at that w or later.
        type Receipts = HashMap<(u8, u32), (Vec<u32>, Vec<u64>)>;
        let index: Vec<Receipts> = recs
            .iter()
            .map(|r| {
                let mut by: HashMap<(u8, u32), Vec<(u32, u64)>> = HashMap::new();
                for rec in r.lock().unwrap().iter() {
                    by.entry((rec.sub, rec.row))
                        .or_default()
                        .push((rec.w, rec.t));
                }
                by.into_iter()
                    .map(|(k, mut v)| {
                        v.sort_unstable();
                        let ws = v.iter().map(|x| x.0).collect();
                        let mut ts: Vec<u64> = v.iter().map(|x| x.1).collect();
                        for i in (0..ts.len().saturating_sub(1)).rev() {
                            ts[i] = ts[i].min(ts[i + 1]);
                        }
                        (k, (ws, ts))
                    })
                    .collect()
            })
            .collect();
        let first = |c: usize, sub: u8, row: u32, w: u64| -> Option<u64> {
            let (ws, ts) = index[c].get(&(sub, row))?;
            let i = ws.partition_point(|&x| u64::from(x) < w);
            ts.get(i).copied()
        };
        let mut out = String::new();
        for &(w, row, ack) in log {
            let mut subs: Vec<(usize, u8)> = Vec::new();
            if row >= BOARD_BASE {
                subs.extend((0..n).map(|c| (c, SUB_BOARD)));
            } else {
                let r = row as usize;
                let g = r / GROUP;
                subs.extend((g * GROUP..((g + 1) * GROUP).min(n)).map(|c| (c, SUB_GROUP)));
                if r < n {
                    subs.push((r, SUB_ME));
                }
            }
            let (mut latest, mut missing) = (i64::MIN, 0usize);
            for (c, sub) in subs {
                match first(c, sub, row, w) {
                    Some(t) => latest = latest.max(t as i64 - ack as i64),
                    None => missing += 1,
                }
            }
            out.push_str(&format!("{latest} {missing}\n"));
        }
        out.pop();
        out
    }

    async fn client(
        c: usize,
        addr: SocketAddr,
        counters: Arc<Counters>,
        recs: Arc<Vec<Mutex<Vec<Rec>>>>,
        cmd: watch::Receiver<Cmd>,
        gate: Arc<Semaphore>,
    ) {
        let req = format!("ws://{addr}/remodel/ws")
            .into_client_request()
            .unwrap();
        // A browser-sized client: small buffers (this process's memory is not measured, but
        // 10,000 clients with 128 KiB buffers each would be 2.5 GiB).
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let permit = gate.acquire().await.unwrap();
        let mut ws = None;
        for _ in 0..5 {
            match tokio_tungstenite::connect_async_with_config(req.clone(), Some(config), true)
                .await
            {
                Ok((s, _)) => {
                    ws = Some(s);
                    break;
                }
                Err(e) => {
                    eprintln!("client {c}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let Some(mut ws) = ws else {
            counters.failed.fetch_add(1, Ordering::AcqRel);
            counters.changed.notify_one();
            return;
        };
        // The hello.
        let _ = ws.next().await;
        drop(permit);
        counters.connected.fetch_add(1, Ordering::AcqRel);
        counters.changed.notify_one();
        // Pings within the idle timeout (30 s), spread over clients.
        let spread = Duration::from_millis((c as u64 * 7919) % 10_000);
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + spread,
            Duration::from_secs(10),
        );
        let wanted: Vec<u8> = match std::env::var("REMODEL_WS_SUBS") {
            Ok(list) => [("me", SUB_ME), ("group", SUB_GROUP), ("board", SUB_BOARD)]
                .into_iter()
                .filter(|(name, _)| list.split(',').any(|l| l == *name))
                .map(|(_, id)| id)
                .collect(),
            Err(_) => vec![SUB_ME, SUB_GROUP, SUB_BOARD],
        };
        let mut resets = 0usize;
        let mut subscribed = false;
        // One wait for the next command for as long as none comes: made again on every
        // message, it would register with and leave the channel every client shares (one
        // lock for all 10,000), which no browser pays.
        let mut next_cmd = Box::pin(next_command(cmd));
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            counters.gone.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Some(Ok(_)) => continue,
                    };
                    let t = now_ns();
                    counters.frames.fetch_add(1, Ordering::Relaxed);
                    counters.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                    let frame: Frame = serde_json::from_str(text.as_str()).expect("frames are JSON");
                    // A batch: several frames in one message, applied in order.
                    let frames = match frame.t.as_ref() {
                        "batch" => frame.frames,
                        _ => vec![frame],
                    };
                    for f in &frames {
                        match f.t.as_ref() {
                            "reset" => {
                                resets += 1;
                                if resets > wanted.len() {
                                    counters.resyncs.fetch_add(1, Ordering::Relaxed);
                                }
                                if resets == wanted.len() {
                                    counters.subscribed.fetch_add(1, Ordering::AcqRel);
                                    counters.changed.notify_one();
                                }
                                record(&recs[c], f, t);
                            }
                            // The rest of a large reset (resets count once, by their first
                            // frame).
                            "change" | "more" => record(&recs[c], f, t),
                            "end" => {
                                eprintln!("client {c}: {text}");
                                counters.ends.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                }
                _ = ping.tick() => {
                    if ws.send(Message::text(r#"{"op":"ping"}"#)).await.is_err() {
                        counters.gone.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                (changed, rx) = &mut next_cmd => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *rx.borrow();
                    next_cmd = Box::pin(next_command(rx));
                    match now {
                        Cmd::Subscribe if !subscribed => {
                            subscribed = true;
                            let frames = [
                                json!({"op": "sub", "id": SUB_ME, "name": "me", "params": {"id": format!("p{c}")}}),
                                json!({"op": "sub", "id": SUB_GROUP, "name": "group", "params": {"group": format!("g{}", c / GROUP)}}),
                                json!({"op": "sub", "id": SUB_BOARD, "name": "board"}),
                            ];
                            for f in frames.into_iter().filter(|f| {
                                wanted.iter().any(|&id| f["id"] == u64::from(id))
                            }) {
                                if ws.send(Message::text(f.to_string())).await.is_err() {
                                    counters.gone.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            }
                        }
                        Cmd::Quit => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Waits for the driver's next command; gives the receiver back.
    async fn next_command(
        mut rx: watch::Receiver<Cmd>,
    ) -> (Result<(), watch::error::RecvError>, watch::Receiver<Cmd>) {
        let changed = rx.changed().await;
        rx.borrow_and_update();
        (changed, rx)
    }

    /// A server frame, as much of it as the clients check: typed and borrowing from the
    /// message (every field it does not name is skipped unread). The clients share the
    /// server's cores, and every figure pays for their CPU, which real browsers would not
    /// take from the server: parsing each frame into a tree of values was a third of it.
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        t: std::borrow::Cow<'a, str>,
        #[serde(default)]
        sub: u64,
        #[serde(default, borrow)]
        rows: Vec<(std::borrow::Cow<'a, str>, Option<Doc>)>,
        #[serde(default, borrow)]
        frames: Vec<Frame<'a>>,
    }

    /// A row: only its write number.
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        w: u64,
    }

    /// Notes every row of a reset or change frame that carries a write's `w`.
    fn record(recs: &Mutex<Vec<Rec>>, f: &Frame<'_>, t: u64) {
        let sub = f.sub as u8;
        let mut recs = recs.lock().unwrap();
        for (key, doc) in &f.rows {
            let Some(w) = doc.as_ref().map(|d| d.w) else {
                continue;
            };
            if w == 0 {
                continue;
            }
            if let Some(row) = row_number(key) {
                recs.push(Rec {
                    sub,
                    row,
                    w: w as u32,
                    t,
                });
            }
        }
    }
}
