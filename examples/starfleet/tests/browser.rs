//! The browser test: headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! through chromedriver with fantoccini) shows changes made by other HTTP requests without
//! reloading: a member added, edited, moved between two open ship pages, a score on the
//! leaderboard, a bar of the species chart; eight tabs live at once (one WebSocket each);
//! personal logs seen only by their member; and after the server restarts, every page
//! reconnects, resumes each subscription from its cursor and shows every write made meanwhile.
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

/// A raw POST; the reply.
async fn raw_post(addr: SocketAddr, path: &str, form: &str, cookie: Option<&str>) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         {cookie}Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
}

/// A form POST over a real connection, as another browser would send it, signed in as `who`
/// (the app's rules decide who may change whom).
async fn post(addr: SocketAddr, who: Option<&str>, path: &str, form: &str) {
    let cookie = match who {
        Some(who) => {
            let reply = raw_post(addr, "/signin", &format!("member_id={who}"), None).await;
            let line = reply
                .lines()
                .find_map(|l| {
                    l.strip_prefix("set-cookie: ")
                        .or_else(|| l.strip_prefix("Set-Cookie: "))
                })
                .unwrap_or_else(|| panic!("signed in as {who}: {reply}"));
            Some(line.split(';').next().unwrap_or_default().to_string())
        }
        None => None,
    };
    let reply = raw_post(addr, path, form, cookie.as_deref()).await;
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

/// Opens `path` and waits until its live connection is up and every live part drew its first
/// result. Marks the page, so that [`still_same_page`] can tell it was not reloaded.
async fn open(client: &Client, addr: SocketAddr, path: &str) {
    let started = Instant::now();
    client.goto(&format!("http://{addr}{path}")).await.unwrap();
    println!("{path}: loaded in {} ms", started.elapsed().as_millis());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{path}: the page load stalled"
    );
    let connected = "window.starfleet && window.starfleet.live.state === 'live' \
                     && (Object.keys(window.starfleet.redraws).length > 0 || !document.body.dataset.page) \
                     && document.getElementById('live-state').textContent === 'live'";
    assert!(
        wait_for(client, connected, Duration::from_secs(5))
            .await
            .is_some(),
        "{path}: live"
    );
    client
        .execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();
    println!("{path}: live in {} ms", started.elapsed().as_millis());
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

/// The client's `compare` (which keeps every page's rows in order) against the server's
/// `remodel::value::compare`, on values of every type: mixed types, objects (compared by
/// their sorted fields), strings beyond the basic plane, numbers of every kind.
async fn client_orders_values_as_the_server_does(client: &Client) {
    let values = json!([
        "b", "a", "", "\u{ff5e}", "\u{1f600}", "\u{e000}", "\u{d7ff}", "ab", "a\u{0}",
        [1, 2], [1], [], [[0]], ["a"], [null], [true],
        true, false, null,
        10, 2, -1, 0, 0.5, -0.0, 1e300, -1e300, 9007199254740991i64,
        {"n": 10}, {"n": 2}, {"m": 1, "n": 1}, {}, {"a": {"b": 1}}, {"a": {"b": "x"}}, {"b": 0},
    ]);
    let mut want: Vec<Value> = values.as_array().unwrap().clone();
    want.sort_by(remodel::value::compare);
    let script = "const [values, done] = arguments; \
                  import('/remodel/client.js').then((m) => done(values.slice().sort(m.compare)));";
    let got = client.execute_async(script, vec![values]).await.unwrap();
    let got = got.as_array().expect("sorted values").clone();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            remodel::value::compare(g, w),
            std::cmp::Ordering::Equal,
            "#{i}: the client put {g} where the server puts {w}\nclient: {got:?}\nserver: {want:?}"
        );
    }
}

fn row_with(body: &str, text: &str) -> String {
    format!("[...document.querySelectorAll('#{body} tr')].some(tr => tr.textContent.includes({text:?}))")
}

/// The app served on `addr` (127.0.0.1:0 for any port) until `stop` fires: then its live
/// connections are closed (as `main.rs` does on Ctrl-C) and it stops listening.
async fn serve(
    db: remodel::Database,
    addr: SocketAddr,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let state = AppState::new(db).await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let web = state.clone();
    let shutdown = async move {
        let _ = stopped.await;
        web.disconnect_live_clients();
    };
    tokio::spawn(
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .into_future(),
    );
    (addr, stop)
}

/// Clicks the element `css` (a form's button) and waits for the page the form leads to.
async fn click(client: &Client, css: &str, lands_on: &str) {
    let el = client.find(fantoccini::Locator::Css(css)).await.unwrap();
    el.click().await.unwrap();
    let landed =
        format!("location.pathname === {lands_on:?} && document.readyState === 'complete'");
    assert!(
        wait_for(client, &landed, LIVE).await.is_some(),
        "{css} did not lead to {lands_on}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_changes_without_reload() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        return;
    }
    let db = open_database(None).await.unwrap();
    let (addr, stop) = serve(db.clone(), "127.0.0.1:0".parse().unwrap()).await;

    let profile = std::env::temp_dir().join(format!("starfleet-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let (_driver, client) = browser(&profile).await;

    // A member added by someone else appears on the open ship page, in name order.
    open(&client, addr, "/ship/voyager").await;
    screenshot(&client, "ship-before").await;
    post(
        addr,
        Some("janeway"),
        "/ship/voyager/crew",
        "name=Kes&rank=ensign&species=ocampa",
    )
    .await;
    shows_live(&client, "add", &row_with("crew", "Kes")).await;
    let order = "[...document.querySelectorAll('#crew tr td:first-child')].map(td => td.textContent).join('|')";
    assert_eq!(
        client
            .execute(&format!("return {order};"), vec![])
            .await
            .unwrap(),
        json!("Kathryn Janeway|Kes|Neelix|Tuvok"),
        "the crew in name order"
    );

    client_orders_values_as_the_server_does(&client).await;

    // An edit.
    post(
        addr,
        Some("janeway"),
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
    post(
        addr,
        Some("janeway"),
        "/member/tuvok/move",
        "ship_id=enterprise",
    )
    .await;
    shows_live(&client, "move (arrives)", &row_with("crew", "Tuvok")).await;
    client.close_window().await.unwrap();
    client.switch_to_window(voyager.clone()).await.unwrap();
    shows_live(
        &client,
        "move (leaves)",
        &format!("!{}", row_with("crew", "Tuvok")),
    )
    .await;

    // An away-team assignment (many-to-many): in the table, and out of the picker.
    let in_picker =
        "[...document.querySelectorAll('#assign-member option')].some(o => o.value === 'picard')";
    if wait_for(&client, in_picker, LIVE).await.is_none() {
        let html = client.execute("return document.getElementById('assign-member').outerHTML + JSON.stringify(window.starfleet.redraws) + JSON.stringify([...document.querySelectorAll('#away tr')].map(t => t.textContent));", vec![]).await.unwrap();
        panic!("picard is not in the picker: {html}");
    }
    post(
        addr,
        Some("janeway"),
        "/ship/voyager/away",
        "member_id=picard",
    )
    .await;
    shows_live(&client, "away team", &row_with("away", "Picard")).await;
    shows_live(&client, "away picker", &format!("!{in_picker}")).await;
    screenshot(&client, "ship-after").await;

    // Eight tabs of the app in one browser, all live (one WebSocket each; event streams
    // stalled the seventh).
    let mut tabs = vec![voyager.clone()];
    for _ in 0..7 {
        let tab = client.new_window(true).await.unwrap();
        client.switch_to_window(tab.handle.clone()).await.unwrap();
        open(&client, addr, "/ship/voyager").await;
        tabs.push(tab.handle);
    }
    post(
        addr,
        Some("janeway"),
        "/ship/voyager/crew",
        "name=Icheb&rank=cadet&species=brunali",
    )
    .await;
    for (i, tab) in tabs.iter().enumerate() {
        client.switch_to_window(tab.clone()).await.unwrap();
        shows_live(
            &client,
            &format!("tab {}", i + 1),
            &row_with("crew", "Icheb"),
        )
        .await;
    }
    for tab in &tabs[1..] {
        client.switch_to_window(tab.clone()).await.unwrap();
        client.close_window().await.unwrap();
    }
    client.switch_to_window(voyager).await.unwrap();

    // A member's page follows edits made elsewhere, warns the editor, and hides its
    // controls once the member is deleted.
    open(&client, addr, "/member/kira").await;
    post(
        addr,
        Some("sisko"),
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
    shows_live(
        &client,
        "edit warning",
        "!document.getElementById('changed').hidden",
    )
    .await;
    screenshot(&client, "member-changed").await;
    post(addr, Some("sisko"), "/member/kira/delete", "").await;
    shows_live(
        &client,
        "member deleted",
        "!document.getElementById('deleted').hidden && document.querySelector('.controls').hidden",
    )
    .await;

    // The leaderboard.
    open(&client, addr, "/leaderboard").await;
    post(addr, None, "/leaderboard", "player=Seven&points=90").await;
    shows_live(&client, "leaderboard", &row_with("scores", "Seven")).await;
    post(addr, None, "/leaderboard", "player=Paris&points=95").await;
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
        Some("sisko"),
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
        Some("sisko"),
        "/ship/defiant/crew",
        "name=Nog&rank=ensign&species=ferengi",
    )
    .await;
    shows_live(
        &client,
        "ship counts",
        "document.getElementById('count-defiant').textContent === '4'",
    )
    .await;
    screenshot(&client, "ships").await;

    // Personal logs: signed in as Tuvok, he writes to his own log and cannot read Neelix's;
    // signed in as Neelix, the reverse.
    open(&client, addr, "/signin").await;
    click(&client, "#signin-tuvok", "/member/tuvok").await;
    open(&client, addr, "/member/tuvok").await;
    let write = "document.getElementById('log-text').value = 'Stardate 1: logic prevails.'; \
                 document.getElementById('log-form').requestSubmit(); return true;";
    client.execute(write, vec![]).await.unwrap();
    shows_live(
        &client,
        "own log",
        "document.getElementById('log').textContent.includes('logic prevails')",
    )
    .await;
    screenshot(&client, "member-log").await;
    open(&client, addr, "/member/neelix").await;
    assert!(
        wait_for(&client, "document.getElementById('log-locked')", LIVE)
            .await
            .is_some()
    );
    click(&client, "header form button", "/").await; // sign out
    open(&client, addr, "/signin").await;
    click(&client, "#signin-neelix", "/member/neelix").await;
    open(&client, addr, "/member/tuvok").await;
    assert!(
        wait_for(&client, "document.getElementById('log-locked')", LIVE)
            .await
            .is_some()
    );
    let body = client.source().await.unwrap();
    assert!(!body.contains("logic prevails"), "Neelix reads Tuvok's log");
    open(&client, addr, "/member/neelix").await;
    shows_live(
        &client,
        "neelix's own log",
        "document.getElementById('log-form')",
    )
    .await;

    // The server restarts: the page shows it is reconnecting, then resumes every
    // subscription (cursors) and shows the writes made while it was down, unreloaded.
    open(&client, addr, "/ship/defiant").await;
    post(
        addr,
        Some("sisko"),
        "/ship/defiant/crew",
        "name=Ezri&rank=ensign&species=trill",
    )
    .await;
    shows_live(&client, "before the restart", &row_with("crew", "Ezri")).await;
    let _ = stop.send(());
    shows_live(
        &client,
        "reconnecting badge",
        "document.documentElement.dataset.remodelState !== 'live'",
    )
    .await;
    screenshot(&client, "reconnecting").await;
    // Writes while no server runs.
    use remodel::Model;
    use starfleet::models::{Crewmember, Starship};
    let defiant = Starship::get(&db, "defiant").await.unwrap().unwrap();
    defiant
        .crewmembers(&db)
        .create(Crewmember::new("Garak", "tailor", "cardassian"))
        .await
        .unwrap();
    let mut dax = Crewmember::get(&db, "dax").await.unwrap().unwrap();
    dax.delete(&db).await.unwrap();
    let (again, _stop) = serve(db.clone(), addr).await;
    assert_eq!(again, addr);
    let all = format!(
        "{} && !{} && document.documentElement.dataset.remodelState === 'live'",
        row_with("crew", "Garak"),
        row_with("crew", "Jadzia Dax")
    );
    let took = wait_for(&client, &all, Duration::from_secs(15)).await;
    assert!(
        took.is_some(),
        "after the restart the page shows every write made meanwhile"
    );
    assert!(still_same_page(&client).await, "resumed, not reloaded");
    println!(
        "restart: all writes shown after {} ms",
        took.unwrap().as_millis()
    );
    screenshot(&client, "reconnected").await;

    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
}

/// The position the map in `client` shows for `ship`, and how many times it was redrawn.
async fn map_state(client: &Client, ship: &str) -> (String, u64) {
    let script = format!(
        "return [document.querySelector('#map g[data-ship={ship}]').getAttribute('transform'), \
         window.starfleet.redraws.map || 0];"
    );
    let v = client.execute(&script, vec![]).await.unwrap();
    (v[0].as_str().unwrap().to_string(), v[1].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_moves_live_and_the_stats_chart_grows() {
    use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
    use remodel::Model;
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        return;
    }
    let db = open_database(None).await.unwrap();
    let (addr, _stop) = serve(db.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = std::env::temp_dir();
    let (one, two) = (
        dir.join(format!("starfleet-map-a-{}", std::process::id())),
        dir.join(format!("starfleet-map-b-{}", std::process::id())),
    );
    let _ = (std::fs::remove_dir_all(&one), std::fs::remove_dir_all(&two));
    // Two browsers: the test watches the second while the first drags.
    let (_driver_a, dragger) = browser(&one).await;
    let (_driver_b, watcher) = browser(&two).await;
    open(&dragger, addr, "/map").await;
    open(&watcher, addr, "/map").await;
    let (before, redraws_before) = map_state(&watcher, "voyager").await;

    // A 1.5 s drag of Voyager, 30 steps of 50 ms.
    let ship = dragger
        .find(fantoccini::Locator::Css("#map g[data-ship=voyager] circle"))
        .await
        .unwrap();
    let mut drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: ship,
            duration: None,
            x: 0.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        });
    for _ in 0..30 {
        drag = drag.then(PointerAction::MoveBy {
            duration: Some(Duration::from_millis(50)),
            x: 8.0,
            y: -3.0,
        });
    }
    drag = drag.then(PointerAction::Up {
        button: MOUSE_BUTTON_LEFT,
    });
    let started = Instant::now();
    let dragging = {
        let dragger = dragger.clone();
        tokio::spawn(async move { dragger.perform_actions(drag).await })
    };
    // The other map shows the ship moving within a second of the drag's start.
    let mut moved_after = None;
    while started.elapsed() < Duration::from_secs(3) {
        if map_state(&watcher, "voyager").await.0 != before {
            moved_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved_after = moved_after.expect("the other map shows the drag");
    println!(
        "map: the other window moved after {} ms",
        moved_after.as_millis()
    );
    assert!(moved_after < Duration::from_secs(1), "{moved_after:?}");
    dragging.await.unwrap().unwrap();
    let drag_time = started.elapsed();
    // Both maps settle on the stored position.
    let stored = || async {
        let s = starfleet::models::Starship::get(&db, "voyager")
            .await
            .unwrap()
            .unwrap();
        format!("translate({},{})", s.x, s.y)
    };
    let mut settled = false;
    for _ in 0..100 {
        let want = stored().await;
        let (a, b) = (
            map_state(&dragger, "voyager").await.0,
            map_state(&watcher, "voyager").await.0,
        );
        if a == want && b == want && want != before {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(settled, "both maps show the stored position");
    let redraws = map_state(&watcher, "voyager").await.1 - redraws_before;
    let most = drag_time.as_millis() as u64 / 50 + 2;
    println!(
        "map: {redraws} redraws of the other window during a {} ms drag (at most {most})",
        drag_time.as_millis()
    );
    assert!(redraws <= most, "{redraws} redraws");
    screenshot(&watcher, "map").await;

    // The stats chart gains points while writes happen.
    open(&watcher, addr, "/stats").await;
    click(&watcher, "#traffic", "/stats").await;
    let grows = "+(document.getElementById('stats-chart').dataset.points || 0) >= 3 \
                 && +(document.getElementById('stats-chart').dataset.maxWrites || 0) > 0";
    let took = wait_for(&watcher, grows, Duration::from_secs(10)).await;
    assert!(
        took.is_some(),
        "the stats chart gains points while writes happen"
    );
    screenshot(&watcher, "stats").await;

    dragger.close().await.unwrap();
    watcher.close().await.unwrap();
    let _ = (std::fs::remove_dir_all(&one), std::fs::remove_dir_all(&two));
}
