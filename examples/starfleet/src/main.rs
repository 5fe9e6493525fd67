//! `cargo run --release -p starfleet [-- --addr 127.0.0.1:8090 --data-dir starfleet-data]`
//! `cargo run --release -p starfleet -- --postgres postgresql://user@host/db` (shared)

use starfleet::{open_database, open_postgres, router, AppState};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: starfleet [--addr HOST:PORT] [--data-dir DIR | --postgres URL]
  --addr      where to listen (default 127.0.0.1:8090)
  --data-dir  the database folder, created when missing (default ./starfleet-data)
  --postgres  a shared PostgreSQL database instead (many instances may share it)";

/// The command line.
struct Args {
    /// `HOST:PORT`: an IP address or a name (`localhost:8090`), resolved when binding.
    addr: String,
    data_dir: PathBuf,
    postgres: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        addr: "127.0.0.1:8090".to_string(),
        data_dir: PathBuf::from("starfleet-data"),
        postgres: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                let port = v
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                match port {
                    Some((host, Ok(_))) if !host.is_empty() => parsed.addr = v,
                    _ => return Err(format!("--addr: `{v}` is not HOST:PORT")),
                }
            }
            "--data-dir" => parsed.data_dir = PathBuf::from(value()?),
            "--postgres" => parsed.postgres = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("starfleet: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starfleet: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (db, data) = match &args.postgres {
        Some(url) => (open_postgres(url).await?, "on PostgreSQL".to_string()),
        None => (
            open_database(Some(&args.data_dir)).await?,
            format!("data in {}", args.data_dir.display()),
        ),
    };
    let state = AppState::new(db.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    println!(
        "Starfleet is at http://{} ({data}; Ctrl-C stops)",
        listener.local_addr()?,
    );
    let shutdown = {
        let state = state.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            // Open live connections would keep the server waiting: close them (browsers
            // reconnect to the next server and resume).
            state.disconnect_live_clients();
        }
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    db.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn parse(args: &[&str]) -> Result<(String, String), String> {
        let a = parse_args(args.iter().map(|s| s.to_string()))?;
        Ok((a.addr, a.data_dir.display().to_string()))
    }

    #[test]
    fn flags_and_defaults() {
        assert_eq!(
            parse(&[]),
            Ok(("127.0.0.1:8090".into(), "starfleet-data".into()))
        );
        assert_eq!(
            parse(&["--addr", "0.0.0.0:9000", "--data-dir", "/tmp/sf"]),
            Ok(("0.0.0.0:9000".into(), "/tmp/sf".into()))
        );
        assert_eq!(
            parse(&["--addr", "localhost:8091"]),
            Ok(("localhost:8091".into(), "starfleet-data".into()))
        );
        assert_eq!(
            parse(&["--addr", "[::1]:8091"]),
            Ok(("[::1]:8091".into(), "starfleet-data".into()))
        );
        for bad in ["nowhere", "localhost:", ":80", "localhost:http", "h:99999"] {
            assert!(
                parse(&["--addr", bad])
                    .unwrap_err()
                    .contains("not HOST:PORT"),
                "{bad}"
            );
        }
        assert!(parse(&["--data-dir"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&["--port", "1"])
            .unwrap_err()
            .contains("unknown argument"));
        assert_eq!(parse(&["--help"]), Err(String::new()));
    }
}
