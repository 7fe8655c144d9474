//! Datasets: the list, a dataset's commits and training snapshots, and preparing a snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use automl_proto::data_management::{
    DatasetPointer, DatasetQuery, DatasetSummary, ListQueryOptions, SnapshotState,
};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Redirect;
use axum::{Extension, Form};
use futures::{StreamExt, TryStreamExt};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Section, page};
use super::time;
use crate::AppState;
use crate::error::WebResult;
use crate::session::Session;

fn statistics(stats: &std::collections::HashMap<String, String>) -> Markup {
    let sorted: BTreeMap<_, _> = stats.iter().collect();
    html! { @for (k, v) in sorted { span.param { (k) "=" (v) } " " } }
}

/// `?page=` of the datasets page.
#[derive(Debug, Deserialize, Default)]
pub struct DatasetsQuery {
    #[serde(default)]
    page: u32,
}

/// GET /datasets
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Query(query): Query<DatasetsQuery>,
) -> WebResult<Markup> {
    let size = state.page_size;
    let data = state.backends.data(&session.credentials);
    let pointers: Vec<DatasetPointer> = data
        .clone()
        .list_datasets(ListQueryOptions {
            limit: size as i32 + 1,
            index: query.page.saturating_mul(size) as i32,
        })
        .await?
        .into_inner()
        .try_collect()
        .await?;
    let more = pointers.len() > size as usize;
    let summaries: Vec<DatasetSummary> =
        futures::stream::iter(pointers.into_iter().take(size as usize))
            .map(|pointer| {
                let mut data = data.clone();
                async move {
                    data.get_dataset_summary(pointer)
                        .await
                        .map(|s| s.into_inner())
                }
            })
            .buffered(8)
            .try_collect()
            .await?;
    let body = html! {
        h1 { "Datasets" }
        div.table-wrap { table #datasets {
            thead { tr { th { "id" } th { "name" } th { "description" } th.num { "commits" } th { "updated" } } }
            tbody { @for d in &summaries { tr data-dataset=(d.dataset_id) {
                td { a href={"/datasets/" (d.dataset_id)} { (d.dataset_id) } }
                td { a href={"/datasets/" (d.dataset_id)} { (d.name) } }
                td { (d.description) }
                td.num { (d.commits.len()) }
                td { (time(&d.last_updated_at)) }
            } } }
        } }
        nav.pager {
            @if query.page > 0 { a rel="prev" href={"/datasets?page=" (query.page - 1)} { "← previous" } }
            @if more { a rel="next" href={"/datasets?page=" (query.page + 1)} { "next →" } }
        }
    };
    Ok(page("Datasets", &session, Section::Datasets, false, body))
}

fn snapshot_state(state: i32) -> &'static str {
    match SnapshotState::try_from(state) {
        Ok(SnapshotState::Ready) => "ready",
        Ok(SnapshotState::Running) => "running",
        Ok(SnapshotState::Failed) => "failed",
        _ => "unknown",
    }
}

/// GET /datasets/{id}
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(dataset_id): Path<String>,
) -> WebResult<Markup> {
    let mut data = state.backends.data(&session.credentials);
    let summary = data
        .get_dataset_summary(DatasetPointer {
            dataset_id: dataset_id.clone(),
        })
        .await?
        .into_inner();
    let snapshots = data
        .list_training_snapshots(DatasetPointer {
            dataset_id: dataset_id.clone(),
        })
        .await?
        .into_inner()
        .snapshots;
    let body = html! {
        h1 { "Dataset " (summary.dataset_id) " " small { (summary.name) } }
        p { (summary.description) }
        h2 { "Commits" }
        div.table-wrap { table #commits {
            thead { tr { th { "commit" } th { "created" } th { "message" } th { "tags" } th { "statistics" } th { "content digest" } } }
            tbody { @for c in &summary.commits { tr {
                td { (c.commit_id) }
                td { (time(&c.created_at)) }
                td { (c.commit_message) }
                td { @for t in &c.tags { span.param { (t.tag_key) "=" (t.tag_value) } " " } }
                td { (statistics(&c.statistics)) }
                td { code.hash { (c.content_digest) } }
            } } }
        } }
        h2 #snapshots { "Training snapshots" }
        form #prepare-form method="post" action={"/datasets/" (summary.dataset_id) "/prepare"} {
            input type="hidden" name="csrf" value=(session.csrf);
            label for="commit" { "Commit (empty: all)" }
            input #commit name="commit_id" placeholder="all commits";
            button type="submit" { "Prepare snapshot" }
        }
        div.table-wrap { table #snapshot-table {
            thead { tr { th { "version hash" } th { "state" } th { "statistics" } th { "content digest" } th { "message" } th { } } }
            tbody { @for s in &snapshots { tr data-version=(s.version_hash) {
                td { code { (s.version_hash) } }
                td { span class={"state " (snapshot_state(s.state))} { (snapshot_state(s.state)) } }
                td { (statistics(&s.statistics)) }
                td { code.hash { (s.content_digest) } }
                td { (s.message) }
                td { a href={"/runs?dataset=" (summary.dataset_id)} { "runs" } }
            } } }
        } }
    };
    Ok(page(
        &format!("Dataset {}", summary.dataset_id),
        &session,
        Section::Datasets,
        false,
        body,
    ))
}

/// The prepare form.
#[derive(Debug, Deserialize)]
pub struct PrepareForm {
    csrf: Option<String>,
    #[serde(default)]
    commit_id: String,
}

/// POST /datasets/{id}/prepare
pub async fn prepare(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(dataset_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<PrepareForm>,
) -> WebResult<Redirect> {
    session.check_csrf(&headers, form.csrf.as_deref())?;
    state
        .backends
        .data(&session.credentials)
        .prepare_training_dataset(DatasetQuery {
            dataset_id: dataset_id.clone(),
            commit_id: form.commit_id.trim().to_string(),
            tags: Vec::new(),
        })
        .await?;
    Ok(Redirect::to(&format!("/datasets/{dataset_id}#snapshots")))
}
