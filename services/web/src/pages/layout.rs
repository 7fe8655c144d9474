//! The frame around every page.

use maud::{DOCTYPE, Markup, html};

use crate::session::Session;

fn head(title: &str, charts: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · automl" }
            link rel="stylesheet" href="/assets/app.css";
            @if charts {
                link rel="stylesheet" href="/assets/uPlot.min.css";
                script src="/assets/uPlot.iife.min.js" {}
            }
            script src="/assets/app.js" defer {}
        }
    }
}

/// Which section of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Runs and comparisons.
    Runs,
    /// Training jobs.
    Jobs,
    /// Datasets.
    Datasets,
    /// Models and prediction.
    Models,
    /// Hyperparameter searches.
    Experiments,
}

/// A page of the console: navigation, the session's cross-site token, then `body`.
pub fn page(
    title: &str,
    session: &Session,
    section: Section,
    charts: bool,
    body: Markup,
) -> Markup {
    let links = [
        (Section::Runs, "/runs", "Runs"),
        (Section::Jobs, "/jobs", "Jobs"),
        (Section::Datasets, "/datasets", "Datasets"),
        (Section::Models, "/models", "Models"),
        (Section::Experiments, "/experiments", "Experiments"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, charts))
            body {
                meta name="csrf-token" content=(session.csrf);
                header.top {
                    a.brand href="/" { "automl" }
                    nav.sections {
                        @for (s, href, label) in links {
                            a href=(href) class=[(s == section).then_some("active")] { (label) }
                        }
                    }
                    @if session.signed_in {
                        form.signout method="post" action="/signout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body {
                header.top { a.brand href="/" { "automl" } }
                main { (body) }
            }
        }
    }
}
