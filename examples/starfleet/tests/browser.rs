//! The browser test: headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! through chromedriver with fantoccini) shows changes made by other HTTP requests without
//! reloading: a member added, edited, moved between two open ship pages, a score on the
//! leaderboard, a bar of the species chart; and after its live connections are cut, it
//! reconnects, resumes from the last event id and shows every write made meanwhile.
//! Screenshots go to `target/starfleet-screenshots/`.
//!
//! Skips (with a message) when `/usr/bin/chromium` or `/usr/bin/chromedriver` is missing;
//! `.ci/run` installs both.

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use starfleet::{open_database, router, AppState};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How soon a change must show on an open page.
const LIVE: Duration = Duration::from_secs(2);

/// chromedriver, stopped when the test ends (however it ends).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Starts chromedriver and a headless Chromium with the flags this closed network needs.
async fn browser(profile: &Path) -> (Driver, Client) {
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(driver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,860",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        match ClientBuilder::native()
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (driver, client),
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session: {e}"),
        }
    }
}

/// A form POST over a real connection, as another browser would send it.
async fn post(addr: SocketAddr, path: &str, form: &str) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 303"),
        "POST {path} {form}: {reply}"
    );
}

/// Evaluates the JavaScript expression `condition` until it is true or `within` passed;
/// returns how long it took.
async fn wait_for(client: &Client, condition: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let script = format!("return !!({condition});");
    while started.elapsed() < within {
        if client.execute(&script, vec![]).await.unwrap() == Value::Bool(true) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Opens `path` and waits until each of its live streams is connected. Marks the page, so
/// that [`still_same_page`] can tell it was not reloaded.
async fn open(client: &Client, addr: SocketAddr, path: &str) {
    let started = Instant::now();
    client.goto(&format!("http://{addr}{path}")).await.unwrap();
    println!("{path}: loaded in {} ms", started.elapsed().as_millis());
    // Pages left behind must have closed their streams (six connections per host).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{path}: the page load stalled"
    );
    let connected = "window.starfleetLive && window.starfleetLive.length > 0 \
                     && window.starfleetLive.every(es => es.readyState === 1)";
    assert!(
        wait_for(client, connected, Duration::from_secs(5))
            .await
            .is_some(),
        "{path}: live streams"
    );
    client
        .execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();
    println!("{path}: connected in {} ms", started.elapsed().as_millis());
}

async fn still_same_page(client: &Client) -> bool {
    client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap()
        == Value::Bool(true)
}

async fn screenshot(client: &Client, name: &str) {
    let dir = target_dir().join("starfleet-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// `live(client, what, condition)`: the page shows `condition` within [`LIVE`], unreloaded.
async fn shows_live(client: &Client, what: &str, condition: &str) {
    let took = wait_for(client, condition, LIVE).await;
    let took = took.unwrap_or_else(|| panic!("{what}: not shown within {LIVE:?}"));
    assert!(
        still_same_page(client).await,
        "{what}: the page was reloaded"
    );
    println!("{what}: shown after {} ms", took.as_millis());
}

fn row_with(body: &str, text: &str) -> String {
    format!("[...document.querySelectorAll('#{body} tr')].some(tr => tr.textContent.includes({text:?}))")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_changes_without_reload() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        return;
    }
    let db = open_database(None).await.unwrap();
    let state = AppState::new(db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, router(state.clone())).into_future());

    let profile = std::env::temp_dir().join(format!("starfleet-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let (_driver, client) = browser(&profile).await;

    // A member added by someone else appears on the open ship page.
    open(&client, addr, "/ship/voyager").await;
    screenshot(&client, "ship-before").await;
    post(
        addr,
        "/ship/voyager/crew",
        "name=Kes&rank=ensign&species=ocampa",
    )
    .await;
    shows_live(&client, "add", &row_with("crew", "Kes")).await;

    // An edit.
    post(
        addr,
        "/member/tuvok",
        "name=Tuvok&rank=commander&species=vulcan",
    )
    .await;
    shows_live(&client, "edit", &row_with("crew", "commander")).await;
    screenshot(&client, "ship").await;

    // A move: Tuvok leaves the Voyager page and appears on the Enterprise page, both open.
    let voyager = client.window().await.unwrap();
    let tab = client.new_window(true).await.unwrap();
    client.switch_to_window(tab.handle.clone()).await.unwrap();
    open(&client, addr, "/ship/enterprise").await;
    post(addr, "/member/tuvok/move", "ship_id=enterprise").await;
    shows_live(&client, "move (arrives)", &row_with("crew", "Tuvok")).await;
    client.switch_to_window(voyager).await.unwrap();
    shows_live(
        &client,
        "move (leaves)",
        &format!("!{}", row_with("crew", "Tuvok")),
    )
    .await;

    // An away-team assignment (many-to-many).
    post(addr, "/ship/voyager/away", "member_id=picard").await;
    shows_live(&client, "away team", &row_with("away", "Picard")).await;
    screenshot(&client, "ship-after").await;

    // A member's page follows edits made elsewhere.
    open(&client, addr, "/member/kira").await;
    post(
        addr,
        "/member/kira",
        "name=Kira+Nerys&rank=first+officer&species=bajoran",
    )
    .await;
    shows_live(
        &client,
        "member page",
        "document.getElementById('details').textContent.includes('first officer')",
    )
    .await;

    // The leaderboard.
    open(&client, addr, "/leaderboard").await;
    post(addr, "/leaderboard", "player=Seven&points=90").await;
    shows_live(&client, "leaderboard", &row_with("scores", "Seven")).await;
    post(addr, "/leaderboard", "player=Paris&points=95").await;
    shows_live(
        &client,
        "leaderboard order",
        "document.querySelector('#scores tr.score').textContent.includes('Paris')",
    )
    .await;
    screenshot(&client, "leaderboard").await;

    // The species chart.
    open(&client, addr, "/species").await;
    post(
        addr,
        "/ship/defiant/crew",
        "name=Worf&rank=lieutenant+commander&species=klingon",
    )
    .await;
    shows_live(
        &client,
        "species chart",
        "document.querySelector('#chart [data-species=klingon]')",
    )
    .await;
    screenshot(&client, "species").await;

    // The ship list's counts.
    open(&client, addr, "/").await;
    post(
        addr,
        "/ship/defiant/crew",
        "name=Nog&rank=ensign&species=ferengi",
    )
    .await;
    shows_live(
        &client,
        "ship counts",
        "document.getElementById('count-defiant').textContent === '5'",
    )
    .await;

    // Reconnect: the page gets an event (and so an id), its connections are cut, writes
    // happen while it is away; it reconnects with Last-Event-ID and shows them all.
    open(&client, addr, "/ship/defiant").await;
    post(
        addr,
        "/ship/defiant/crew",
        "name=Ezri&rank=ensign&species=trill",
    )
    .await;
    shows_live(&client, "before the cut", &row_with("crew", "Ezri")).await;
    let resumed = state.resumed_streams();
    state.disconnect_live_clients();
    post(
        addr,
        "/ship/defiant/crew",
        "name=Garak&rank=tailor&species=cardassian",
    )
    .await;
    post(
        addr,
        "/member/kira",
        "name=Kira+Nerys&rank=colonel&species=bajoran",
    )
    .await;
    post(addr, "/member/dax/move", "ship_id=voyager").await;
    let all = format!(
        "{} && {} && !{}",
        row_with("crew", "Garak"),
        row_with("crew", "colonel"),
        row_with("crew", "Jadzia Dax")
    );
    let took = wait_for(&client, &all, Duration::from_secs(5)).await;
    assert!(
        took.is_some(),
        "after a reconnect the page shows every write made meanwhile"
    );
    assert!(still_same_page(&client).await, "resumed, not reloaded");
    assert!(
        state.resumed_streams() > resumed,
        "the browser resumed from its Last-Event-ID"
    );
    println!(
        "reconnect: all writes shown after {} ms",
        took.unwrap().as_millis()
    );
    screenshot(&client, "reconnected").await;

    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
}
