//! The HTML templates, compiled into the binary (so it runs from any directory), rendered
//! with minijinja. Autoescaping is on for every `.html` template: a name such as
//! `<script>` is shown as text.

use minijinja::Environment;
use std::sync::OnceLock;

/// The app's templates.
pub struct Templates {
    env: Environment<'static>,
}

const SOURCES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("index.html", include_str!("../templates/index.html")),
    ("ship.html", include_str!("../templates/ship.html")),
    ("crew_row.html", include_str!("../templates/crew_row.html")),
    ("away_row.html", include_str!("../templates/away_row.html")),
    ("member.html", include_str!("../templates/member.html")),
    (
        "member_details.html",
        include_str!("../templates/member_details.html"),
    ),
    ("captains.html", include_str!("../templates/captains.html")),
    ("species.html", include_str!("../templates/species.html")),
    (
        "species_chart.html",
        include_str!("../templates/species_chart.html"),
    ),
    (
        "leaderboard.html",
        include_str!("../templates/leaderboard.html"),
    ),
    ("scores.html", include_str!("../templates/scores.html")),
    ("signin.html", include_str!("../templates/signin.html")),
    ("map.html", include_str!("../templates/map.html")),
    ("stats.html", include_str!("../templates/stats.html")),
];

impl Templates {
    /// The templates, loaded once per process.
    pub fn shared() -> &'static Templates {
        static TEMPLATES: OnceLock<Templates> = OnceLock::new();
        TEMPLATES.get_or_init(|| {
            let mut env = Environment::new();
            for (name, source) in SOURCES {
                // The sources are part of the binary: a syntax error is a bug caught by
                // every test, not something a visitor can cause.
                env.add_template(name, source)
                    .expect("a template of the app does not parse");
            }
            Templates { env }
        })
    }

    /// Renders the template `name` with `ctx`.
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }
}
