//! The crew count by species: a bar chart (SVG drawn here, on the server), CSV and JSON.

use super::{page, Viewer};
use crate::error::AppResult;
use crate::models::Crewmember;
use crate::session::Session;
use crate::templates::Templates;
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use minijinja::context;
use remodel::{Database, Model};
use serde::Serialize;

/// One bar of the chart.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SpeciesCount {
    /// The species.
    pub species: String,
    /// How many crew members are of it.
    pub count: u64,
}

/// Crew count per species, most numerous first (ties by name): one group + count query.
pub async fn species_counts(db: &Database) -> AppResult<Vec<SpeciesCount>> {
    let f = Crewmember::fields();
    let groups = Crewmember::query(db).group(f.species).count().await?;
    Ok(sorted_counts(groups.into_iter()))
}

/// `(species, count)` pairs as the chart shows them: most numerous first, ties by name.
pub fn sorted_counts(groups: impl Iterator<Item = (String, u64)>) -> Vec<SpeciesCount> {
    let mut counts: Vec<SpeciesCount> = groups
        .map(|(species, count)| SpeciesCount { species, count })
        .collect();
    counts.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.species.cmp(&b.species))
    });
    counts
}

/// The chart as an SVG fragment (the page's script redraws it the same way, see
/// `starfleet.js`). The label column is as wide as the longest species name (about 8.5 px a
/// character at 14 px), so that no label is cut off.
pub fn draw_chart(counts: &[SpeciesCount]) -> AppResult<String> {
    const BAR: u64 = 28; // px per row
    let max = counts.iter().map(|c| c.count).max().unwrap_or(1).max(1);
    let longest = counts
        .iter()
        .map(|c| c.species.chars().count())
        .max()
        .unwrap_or(0);
    let label = (longest as u64 * 17 / 2 + 12).clamp(60, 400);
    let bars: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            context! {
                species => c.species,
                count => c.count,
                y => i as u64 * BAR,
                width => 40 + c.count * 360 / max,
            }
        })
        .collect();
    let height = (counts.len() as u64 * BAR).max(BAR);
    let width = label + 10 + 400 + 60;
    Ok(Templates::shared().render(
        "species_chart.html",
        context! { bars, height, label, width },
    )?)
}

/// `/species`: the bar chart (kept live by the `species` publication).
pub async fn chart(State(app): State<AppState>, s: Session) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    let counts = species_counts(&app.db).await?;
    let chart = draw_chart(&counts)?;
    page(&me, "species.html", context! { chart, counts })
}

/// `/species.csv`
pub async fn csv(State(app): State<AppState>) -> AppResult<impl IntoResponse> {
    let mut out = String::from("species,count\r\n");
    for c in species_counts(&app.db).await? {
        out.push_str(&format!("{},{}\r\n", csv_field(&c.species), c.count));
    }
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out))
}

/// `/species.json`: `[{"species": .., "count": ..}]`
pub async fn json(State(app): State<AppState>) -> AppResult<Json<Vec<SpeciesCount>>> {
    Ok(Json(species_counts(&app.db).await?))
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180); a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet does not run it as a
/// formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}
