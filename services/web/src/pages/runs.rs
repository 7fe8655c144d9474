//! Runs: the table (paged and sorted by metadata-store), a run with its live charts and
//! lineage, and the comparison of several runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use automl_proto::metadata_store::{GetRunStatusRequest, ListRunsRequest, RunInfo};
use automl_proto::training::ListTrainingJobsRequest;
use axum::Extension;
use axum::extract::{Path, Query, RawQuery, State};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Section, page};
use super::{duration, number, pager, parameters, script_json, seconds_between, time};
use crate::AppState;
use crate::error::{WebError, WebResult};
use crate::session::Session;

/// Most runs one comparison shows.
const MAX_COMPARED: usize = 8;

/// `running`, `succeeded` or `failed`.
pub fn run_state(run: &RunInfo) -> &'static str {
    if run.end_time.is_empty() {
        "running"
    } else if run.success {
        "succeeded"
    } else {
        "failed"
    }
}

/// Whether smaller values of `metric` are better (metadata-store's rule for "best").
fn lower_is_better(metric: &str) -> bool {
    let name = metric.to_ascii_lowercase();
    name.contains("loss") || name.contains("error")
}

/// The table's query: sort key, direction, page, filters.
#[derive(Debug, Deserialize, Default)]
pub struct RunsQuery {
    #[serde(default)]
    sort: String,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    page: u32,
    #[serde(default)]
    dataset: String,
    #[serde(default)]
    name: String,
}

/// The training parameters of the runs that came from training jobs (run id = job id).
async fn job_parameters(
    state: &AppState,
    session: &Session,
    run_ids: &[&str],
) -> HashMap<String, HashMap<String, String>> {
    let job_ids: Vec<i32> = run_ids.iter().filter_map(|id| id.parse().ok()).collect();
    if job_ids.is_empty() {
        return HashMap::new();
    }
    let answer = state
        .backends
        .training(&session.credentials)
        .list_training_jobs(ListTrainingJobsRequest {
            job_ids,
            ..Default::default()
        })
        .await;
    match answer {
        Ok(answer) => answer
            .into_inner()
            .jobs
            .into_iter()
            .filter_map(|job| Some((job.job_id.to_string(), job.metadata?.parameters)))
            .collect(),
        Err(status) => {
            // Runs logged by trainers outside training-service have no job: the table still shows.
            tracing::debug!(%status, "console: job parameters unavailable");
            HashMap::new()
        }
    }
}

fn sort_link(query: &RunsQuery, key: &str, label: &str) -> Markup {
    let active = query.sort == key;
    let descending = query.desc.is_some();
    // A metric first sorts best first: ascending for a loss or an error, else descending.
    let metric = key
        .strip_prefix("best:")
        .or_else(|| key.strip_prefix("last:"));
    let next_desc = if active {
        !descending
    } else {
        metric.is_some_and(|name| !lower_is_better(name))
    };
    let mut url = form_urlencoded::Serializer::new(String::new());
    url.append_pair("sort", key);
    if next_desc {
        url.append_pair("desc", "1");
    }
    if !query.dataset.is_empty() {
        url.append_pair("dataset", &query.dataset);
    }
    if !query.name.is_empty() {
        url.append_pair("name", &query.name);
    }
    let arrow = match (active, descending) {
        (true, true) => " ▼",
        (true, false) => " ▲",
        _ => "",
    };
    html! { a.sort href={"/runs?" (url.finish())} data-sort=(key) { (label) (arrow) } }
}

/// GET /runs
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Query(query): Query<RunsQuery>,
) -> WebResult<Markup> {
    let size = state.page_size;
    let answer = state
        .backends
        .metadata(&session.credentials)
        .list_runs(ListRunsRequest {
            dataset_id: query.dataset.clone(),
            run_name: query.name.clone(),
            limit: size as i32,
            index: (query.page.saturating_mul(size)) as i32,
            order_by: query.sort.clone(),
            descending: query.desc.is_some(),
            without_epochs: true,
        })
        .await?
        .into_inner();
    let ids: Vec<&str> = answer.runs.iter().map(|r| r.run_id.as_str()).collect();
    let params = job_parameters(&state, &session, &ids).await;
    let metrics: BTreeSet<&String> = answer
        .runs
        .iter()
        .flat_map(|run| run.metric_summaries.keys())
        .collect();
    let mut base = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("sort", query.sort.as_str()),
        ("dataset", &query.dataset),
        ("name", &query.name),
    ] {
        if !value.is_empty() {
            base.append_pair(key, value);
        }
    }
    if query.desc.is_some() {
        base.append_pair("desc", "1");
    }
    let base = format!("/runs?{}", base.finish());
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" {
            input name="dataset" placeholder="dataset id" value=(query.dataset);
            input name="name" placeholder="run name" value=(query.name);
            button type="submit" { "Filter" }
        }
        form #compare-form method="get" action="/compare" {
            div.table-wrap {
                table #runs-table {
                    thead { tr {
                        th { }
                        th { (sort_link(&query, "", "run")) }
                        th { (sort_link(&query, "name", "name")) }
                        th { "dataset / version" }
                        th { "parameters" }
                        @for metric in &metrics {
                            th.num { (sort_link(&query, &format!("last:{metric}"), &format!("{metric} (last)"))) }
                            th.num { (sort_link(&query, &format!("best:{metric}"), &format!("{metric} (best)"))) }
                        }
                        th { (sort_link(&query, "state", "state")) }
                        th.num { (sort_link(&query, "duration", "duration")) }
                        th { (sort_link(&query, "start_time", "started")) }
                    } }
                    tbody {
                        @for run in &answer.runs {
                            @let tracing = run.tracing.clone().unwrap_or_default();
                            tr.run data-run=(run.run_id) {
                                td { input type="checkbox" name="run" value=(run.run_id) aria-label="compare"; }
                                td { a href={"/runs/" (run.run_id)} { (run.run_id) } }
                                td { (run.run_name) }
                                td { a href={"/datasets/" (tracing.dataset_id)} { (tracing.dataset_id) } " " code.hash { (tracing.version_hash) } }
                                td.params { @if let Some(p) = params.get(&run.run_id) { (parameters(p)) } }
                                @for metric in &metrics {
                                    @let summary = run.metric_summaries.get(*metric);
                                    td.num { @if let Some(s) = summary { (number(s.last)) } }
                                    td.num.best { @if let Some(s) = summary { (number(s.best)) } }
                                }
                                td { span class={"state " (run_state(run))} { (run_state(run)) } }
                                td.num { @if let Some(s) = seconds_between(&run.start_time, &run.end_time) { (duration(s)) } }
                                td { (time(&run.start_time)) }
                            }
                        }
                    }
                }
            }
            button type="submit" #compare-button { "Compare selected" }
        }
        (pager(&base, query.page, size, answer.total))
    };
    Ok(page("Runs", &session, Section::Runs, false, body))
}

/// One run's epochs as the charts read them: `[{"epoch": "1", "metrics": {"loss": 0.5}}]`,
/// in epoch order.
pub fn epochs_json(run: &RunInfo) -> serde_json::Value {
    let mut epochs: Vec<_> = run.epochs.values().collect();
    epochs.sort_by_key(|e| {
        (
            e.epoch_id.parse::<i64>().unwrap_or(i64::MAX),
            e.epoch_id.clone(),
        )
    });
    serde_json::Value::Array(epochs.into_iter().map(crate::live::epoch_json).collect())
}

async fn get_run(state: &AppState, session: &Session, run_id: &str) -> WebResult<RunInfo> {
    state
        .backends
        .metadata(&session.credentials)
        .get_run_status(GetRunStatusRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner()
        .run_info
        .ok_or_else(|| WebError::NotFound(format!("run {run_id} not found")))
}

/// GET /runs/{id}
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(run_id): Path<String>,
) -> WebResult<Markup> {
    let run = get_run(&state, &session, &run_id).await?;
    let tracing = run.tracing.clone().unwrap_or_default();
    let params = job_parameters(&state, &session, &[run.run_id.as_str()]).await;
    let digest = if tracing.dataset_id.is_empty() {
        None
    } else {
        state
            .backends
            .data(&session.credentials)
            .fetch_training_dataset(automl_proto::data_management::VersionQuery {
                dataset_id: tracing.dataset_id.clone(),
                version_hash: tracing.version_hash.clone(),
            })
            .await
            .ok()
            .map(|s| s.into_inner().content_digest)
    };
    let artifact = state
        .backends
        .metadata(&session.credentials)
        .get_artifact(automl_proto::metadata_store::GetArtifactRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .ok()
        .map(|a| a.into_inner());
    let data = serde_json::json!({
        "run_id": run.run_id,
        "ended": !run.end_time.is_empty(),
        "epochs": epochs_json(&run),
    });
    let metrics: BTreeSet<&String> = run.metric_summaries.keys().collect();
    let body = html! {
        h1 { "Run " (run.run_id) " " small { (run.run_name) } }
        p { span #run-state class={"state " (run_state(&run))} { (run_state(&run)) } " " span #run-message { (run.message) } }
        section.grid {
            div {
                h2 { "Lineage" }
                dl.lineage {
                    dt { "dataset" } dd { a href={"/datasets/" (tracing.dataset_id)} { (tracing.dataset_id) } }
                    dt { "version hash" } dd { code { (tracing.version_hash) } }
                    dt { "content digest" } dd { code { (digest.unwrap_or_default()) } }
                    dt { "code version" } dd { code { (tracing.code_version) } }
                    dt { "base run" } dd { @if !tracing.base_run_id.is_empty() { a href={"/runs/" (tracing.base_run_id)} { (tracing.base_run_id) } } }
                    dt { "pretrained encoder" } dd { code { (tracing.pretrained_model) } }
                    dt { "model" } dd { @if let Some(a) = &artifact { (a.name) " v" (a.version) } }
                    dt { "job" } dd { @if run.run_id.parse::<i32>().is_ok() { a href={"/jobs/" (run.run_id)} { "job " (run.run_id) } } }
                    dt { "started" } dd { (time(&run.start_time)) }
                    dt { "duration" } dd { @if let Some(s) = seconds_between(&run.start_time, &run.end_time) { (duration(s)) } }
                }
            }
            div {
                h2 { "Parameters" }
                p.params { @if let Some(p) = params.get(&run.run_id) { (parameters(p)) } }
                h2 { "Metrics" }
                div.table-wrap { table #summary { thead { tr { th { "metric" } th.num { "last" } th.num { "best" } th { "best at epoch" } } }
                    tbody { @for m in &metrics { @let s = &run.metric_summaries[*m];
                        tr { td { (m) } td.num { (number(s.last)) } td.num { (number(s.best)) } td { (s.best_epoch) } } } } } }
            }
        }
        h2 { "Training curves" }
        div #charts.charts {}
        script #run-data type="application/json" { (script_json(&data)) }
    };
    Ok(page(
        &format!("Run {}", run.run_id),
        &session,
        Section::Runs,
        true,
        body,
    ))
}

/// GET /compare?run=a&run=b
pub async fn compare(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    RawQuery(query): RawQuery,
) -> WebResult<Markup> {
    let mut ids: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "run" && !value.is_empty() && !ids.contains(&value.to_string()) {
            ids.push(value.into_owned());
        }
    }
    if ids.len() < 2 {
        return Err(WebError::BadRequest(
            "choose at least two runs to compare".into(),
        ));
    }
    if ids.len() > MAX_COMPARED {
        return Err(WebError::BadRequest(format!(
            "compare at most {MAX_COMPARED} runs"
        )));
    }
    let runs =
        futures::future::try_join_all(ids.iter().map(|id| get_run(&state, &session, id))).await?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let params = job_parameters(&state, &session, &id_refs).await;
    let names: BTreeSet<&String> = params.values().flat_map(|p| p.keys()).collect();
    let empty = HashMap::new();
    let data = serde_json::json!({
        "runs": runs.iter().map(|run| serde_json::json!({
            "run_id": run.run_id,
            "epochs": epochs_json(run),
        })).collect::<Vec<_>>(),
    });
    let metrics: BTreeMap<&String, ()> = runs
        .iter()
        .flat_map(|r| r.metric_summaries.keys().map(|k| (k, ())))
        .collect();
    let body = html! {
        h1 { "Compare runs" }
        h2 { "Parameters" }
        div.table-wrap { table #compare-params {
            thead { tr { th { "parameter" } @for run in &runs { th { a href={"/runs/" (run.run_id)} { (run.run_id) } } } } }
            tbody {
                @for name in &names {
                    @let values: Vec<Option<&String>> = runs.iter().map(|r| params.get(&r.run_id).unwrap_or(&empty).get(*name)).collect();
                    @let differs = values.iter().any(|v| *v != values[0]);
                    tr class=[differs.then_some("differs")] data-param=(name) {
                        th { (name) @if differs { " " span.badge { "differs" } } }
                        @for v in &values { td { (v.map(String::as_str).unwrap_or("—")) } }
                    }
                }
                tr { th { "dataset / version" } @for run in &runs { @let t = run.tracing.clone().unwrap_or_default(); td { (t.dataset_id) " " code.hash { (t.version_hash) } } } }
                tr { th { "state" } @for run in &runs { td { (run_state(run)) } } }
            }
        } }
        h2 { "Metrics" }
        div.table-wrap { table #compare-metrics {
            thead { tr { th { "metric" } @for run in &runs { th { (run.run_id) " last / best" } } } }
            tbody { @for (m, ()) in &metrics { tr { th { (m) } @for run in &runs { td.num { @if let Some(s) = run.metric_summaries.get(*m) { (number(s.last)) " / " (number(s.best)) } } } } } }
        } }
        h2 { "Training curves" }
        div #charts.charts {}
        script #compare-data type="application/json" { (script_json(&data)) }
    };
    Ok(page("Compare runs", &session, Section::Runs, true, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_data_cannot_close_its_script_element() {
        let data = serde_json::json!({ "run_name": "</script><script>alert(1)</script>" });
        let text = script_json(&data).0;
        assert!(!text.contains("</script>"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, data);
    }

    #[test]
    fn a_metric_sorts_best_first() {
        let query = RunsQuery::default();
        let link = |key: &str| sort_link(&query, key, key).into_string();
        assert!(link("best:val_accuracy").contains("desc=1"));
        assert!(!link("best:loss").contains("desc=1"));
        assert!(!link("last:val_error").contains("desc=1"));
        assert!(!link("name").contains("desc=1"));
        let active = RunsQuery {
            sort: "best:loss".into(),
            ..RunsQuery::default()
        };
        assert!(
            sort_link(&active, "best:loss", "loss")
                .into_string()
                .contains("desc=1")
        );
    }

    #[test]
    fn run_states() {
        let mut run = RunInfo::default();
        assert_eq!(run_state(&run), "running");
        run.end_time = "2026-01-01T00:00:00Z".into();
        assert_eq!(run_state(&run), "failed");
        run.success = true;
        assert_eq!(run_state(&run), "succeeded");
    }
}
