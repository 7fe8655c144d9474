//! Experiments: the list, and an experiment's trials with their objective and the best trial.

use std::collections::BTreeSet;
use std::sync::Arc;

use automl_proto::training::{
    Experiment, ExperimentStatus, GetExperimentRequest, ListExperimentsRequest, ObjectiveType,
    TrainingStatus, Trial,
};
use axum::Extension;
use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Section, page};
use super::{number, pager, parameters, script_json, time};
use crate::AppState;
use crate::error::{WebError, WebResult};
use crate::session::Session;

fn status(experiment: &Experiment) -> &'static str {
    match ExperimentStatus::try_from(experiment.status) {
        Ok(ExperimentStatus::ExperimentRunning) => "running",
        Ok(ExperimentStatus::ExperimentSucceeded) => "succeeded",
        Ok(ExperimentStatus::ExperimentFailed) => "failed",
        Ok(ExperimentStatus::ExperimentStopped) => "stopped",
        Err(_) => "unknown",
    }
}

fn objective(experiment: &Experiment) -> String {
    let Some(objective) = experiment.spec.as_ref().and_then(|s| s.objective.as_ref()) else {
        return String::new();
    };
    let direction = match ObjectiveType::try_from(objective.r#type) {
        Ok(ObjectiveType::ObjectiveMinimize) => "minimize",
        _ => "maximize",
    };
    match objective.goal {
        Some(goal) => format!("{direction} {} (goal {})", objective.metric, number(goal)),
        None => format!("{direction} {}", objective.metric),
    }
}

fn trial_status(trial: &Trial) -> &'static str {
    if trial.early_stopped_epoch > 0 {
        return "early stopped";
    }
    TrainingStatus::try_from(trial.status).map_or("unknown", super::jobs::status_name)
}

/// `?page=` of the experiments page.
#[derive(Debug, Deserialize, Default)]
pub struct ExperimentsQuery {
    #[serde(default)]
    page: u32,
}

/// GET /experiments
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Query(query): Query<ExperimentsQuery>,
) -> WebResult<Markup> {
    let size = state.page_size;
    let answer = state
        .backends
        .training(&session.credentials)
        .list_experiments(ListExperimentsRequest {
            limit: size as i32,
            index: query.page.saturating_mul(size) as i32,
            statuses: Vec::new(),
        })
        .await?
        .into_inner();
    let body = html! {
        h1 { "Experiments" }
        div.table-wrap { table #experiments {
            thead { tr { th { "id" } th { "name" } th { "algorithm" } th { "objective" } th { "status" } th.num { "trials" } th.num { "best" } th { "created" } } }
            tbody { @for e in &answer.experiments {
                @let spec = e.spec.clone().unwrap_or_default();
                tr data-experiment=(e.experiment_id) {
                    td { a href={"/experiments/" (e.experiment_id)} { (e.experiment_id) } }
                    td { (spec.name) }
                    td { (spec.algorithm) }
                    td { (objective(e)) }
                    td { span class={"state " (status(e))} { (status(e)) } }
                    td.num { (e.trials.len()) }
                    td.num { @if let Some(v) = e.best_trial.as_ref().and_then(|t| t.objective) { (number(v)) } }
                    td { (time(&e.created_at)) }
                }
            } }
        } }
        (pager("/experiments", query.page, size, answer.total))
    };
    Ok(page(
        "Experiments",
        &session,
        Section::Experiments,
        false,
        body,
    ))
}

/// GET /experiments/{id}
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> WebResult<Markup> {
    let experiment_id: i32 = id
        .parse()
        .map_err(|_| WebError::NotFound(format!("experiment {id} not found")))?;
    let e = state
        .backends
        .training(&session.credentials)
        .get_experiment(GetExperimentRequest { experiment_id })
        .await?
        .into_inner();
    let spec = e.spec.clone().unwrap_or_default();
    let best = e.best_trial.as_ref().map(|t| t.trial_number);
    let names: BTreeSet<&String> = e.trials.iter().flat_map(|t| t.parameters.keys()).collect();
    let points: Vec<serde_json::Value> = e
        .trials
        .iter()
        .map(|t| serde_json::json!({ "trial": t.trial_number, "objective": t.objective }))
        .collect();
    let compare: String = e
        .trials
        .iter()
        .filter(|t| t.objective.is_some())
        .take(8)
        .map(|t| format!("run={}", t.run_id))
        .collect::<Vec<_>>()
        .join("&");
    let data = serde_json::json!({ "metric": spec.objective.as_ref().map(|o| o.metric.clone()), "trials": points });
    let body = html! {
        h1 { "Experiment " (e.experiment_id) " " small { (spec.name) } }
        p { span #experiment-status class={"state " (status(&e))} { (status(&e)) } " " (e.message) }
        dl.lineage {
            dt { "objective" } dd { (objective(&e)) }
            dt { "algorithm" } dd { (spec.algorithm) }
            dt { "dataset" } dd { a href={"/datasets/" (spec.dataset_id)} { (spec.dataset_id) } " " code { (spec.train_data_version_hash) } }
            dt { "fixed parameters" } dd.params { (parameters(&spec.parameters)) }
            dt { "trials" } dd { (e.trials.len()) " of at most " (spec.max_trials) ", " (spec.parallel_trials) " at a time" }
            @if let Some(b) = &e.best_trial { dt { "best trial" } dd #best-trial { "trial " (b.trial_number) " · run " a href={"/runs/" (b.run_id)} { (b.run_id) } " · " (b.objective.map(number).unwrap_or_default()) } }
        }
        @if e.trials.iter().filter(|t| t.objective.is_some()).count() >= 2 {
            p { a href={"/compare?" (compare)} { "Compare the trials' runs" } }
        }
        h2 { "Objective per trial" }
        div #charts.charts {}
        h2 { "Trials" }
        div.table-wrap { table #trials {
            thead { tr { th { "trial" } th { "run" } @for n in &names { th { (n) } } th { "status" } th.num { "epochs" } th.num { "objective" } th { "message" } } }
            tbody { @for t in &e.trials {
                tr class=[(best == Some(t.trial_number)).then_some("best")] data-trial=(t.trial_number) {
                    td { (t.trial_number) }
                    td { a href={"/runs/" (t.run_id)} { (t.run_id) } }
                    @for n in &names { td { (t.parameters.get(*n).map(String::as_str).unwrap_or("")) } }
                    td { span class={"state " (trial_status(t).replace(' ', "-"))} { (trial_status(t)) } }
                    td.num { (t.epochs) }
                    td.num { @if let Some(v) = t.objective { (number(v)) } }
                    td { (t.message) }
                }
            } }
        } }
        script #experiment-data type="application/json" { (script_json(&data)) }
    };
    Ok(page(
        &format!("Experiment {}", e.experiment_id),
        &session,
        Section::Experiments,
        true,
        body,
    ))
}
