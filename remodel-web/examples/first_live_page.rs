//! Your first live page: notes that appear in every open tab as they are written.
//! `cargo run -p remodel-web --example first_live_page`, then open http://127.0.0.1:3000 twice.
use axum::{extract::FromRequestParts, http::request::Parts, response::Html, routing::get, Router};
use remodel::{json, Database};
use remodel_web::{Live, NoParams, Refusal, Web};

/// Who is asking (everyone is the same visitor here; see Starfleet for signed sessions).
#[derive(Clone)]
struct Visitor;
impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(_: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Visitor)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::temporary().await?;
    db.create_table("notes").await?;
    let web = Web::<Visitor>::builder(db)
        .publish("notes", |c, _: NoParams| async move {
            // The same notes for every visitor: one feed for all the open pages.
            Ok(Live::new(c.db.table("notes").query().changes())
                .sort_by("text")
                .shared())
        })
        .method("add", |c, text: String| async move {
            if text.trim().is_empty() || text.chars().count() > 200 {
                return Err(Refusal::invalid("a note has 1 to 200 characters"));
            }
            c.db.table("notes").insert(json!({ "text": text })).await?;
            Ok(())
        })
        .build();
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(web.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    Ok(axum::serve(listener, app).await?)
}

const PAGE: &str = r#"<!doctype html><ul id="notes"></ul><input id="text"><button id="add">Add</button>
<script type="module">
import { connect, escapeHtml } from "/remodel/client.js";
const live = connect();
live.subscribe("notes", {}, (rows) => {
  document.getElementById("notes").innerHTML = rows.map((n) => `<li>${escapeHtml(n.text)}</li>`).join("");
});
document.getElementById("add").onclick = () => live.call("add", document.getElementById("text").value);
</script>"#;
