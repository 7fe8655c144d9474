//! Training jobs: the queue and what runs now, recent jobs, a job with its live status and
//! log tail, and cancel.

use std::sync::Arc;

use automl_proto::training::{
    GetTrainingStatusRequest, GetTrainingStatusResponse, ListTrainingJobsRequest, TrainingStatus,
};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Redirect;
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Section, page};
use super::{pager, parameters};
use crate::AppState;
use crate::error::{WebError, WebResult};
use crate::session::{CsrfForm, Session};

/// The name a job's status goes by on the pages.
pub fn status_name(status: TrainingStatus) -> &'static str {
    match status {
        TrainingStatus::Queuing => "queuing",
        TrainingStatus::Launch => "launching",
        TrainingStatus::Running => "running",
        TrainingStatus::Succeed => "succeeded",
        TrainingStatus::Failure => "failed",
        TrainingStatus::Canceled => "canceled",
    }
}

fn status_of(job: &GetTrainingStatusResponse) -> &'static str {
    TrainingStatus::try_from(job.status).map_or("unknown", status_name)
}

fn finished(job: &GetTrainingStatusResponse) -> bool {
    matches!(
        TrainingStatus::try_from(job.status),
        Ok(TrainingStatus::Succeed | TrainingStatus::Failure | TrainingStatus::Canceled)
    )
}

fn jobs_table(id: &str, jobs: &[GetTrainingStatusResponse]) -> Markup {
    html! {
        div.table-wrap { table id=(id) {
            thead { tr { th { "job" } th { "name" } th { "algorithm" } th { "dataset / version" } th { "parameters" } th { "status" } th.num { "position" } th { "message" } } }
            tbody {
                @for job in jobs {
                    @let meta = job.metadata.clone().unwrap_or_default();
                    tr.job data-job=(job.job_id) {
                        td { a href={"/jobs/" (job.job_id)} { (job.job_id) } }
                        td { (meta.name) }
                        td { (meta.algorithm) }
                        td { (meta.dataset_id) " " code.hash { (meta.train_data_version_hash) } }
                        td.params { (parameters(&meta.parameters)) }
                        td { span class={"state " (status_of(job))} { (status_of(job)) } }
                        td.num { @if job.position_in_queue > 0 { (job.position_in_queue) } }
                        td.message { (job.message) }
                    }
                }
            }
        } }
    }
}

/// `?page=` of the jobs page.
#[derive(Debug, Deserialize, Default)]
pub struct JobsQuery {
    #[serde(default)]
    page: u32,
}

/// GET /jobs: active jobs, then every job newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Query(query): Query<JobsQuery>,
) -> WebResult<Markup> {
    let mut training = state.backends.training(&session.credentials);
    let active = training
        .list_training_jobs(ListTrainingJobsRequest {
            statuses: vec![
                TrainingStatus::Queuing as i32,
                TrainingStatus::Launch as i32,
                TrainingStatus::Running as i32,
            ],
            ..Default::default()
        })
        .await?
        .into_inner();
    let size = state.page_size as i32;
    // Jobs are listed oldest first: the newest page is the last one.
    let total = training
        .list_training_jobs(ListTrainingJobsRequest {
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .total;
    let end = total - (query.page as i32).saturating_mul(size);
    let start = (end - size).max(0);
    let mut recent = if end > 0 {
        training
            .list_training_jobs(ListTrainingJobsRequest {
                limit: end - start,
                index: start,
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs
    } else {
        Vec::new()
    };
    recent.reverse();
    let body = html! {
        h1 { "Training jobs" }
        h2 { "Queued and running (" (active.total) ")" }
        (jobs_table("active-jobs", &active.jobs))
        h2 { "All jobs, newest first" }
        (jobs_table("all-jobs", &recent))
        (pager("/jobs", query.page, state.page_size, total))
    };
    Ok(page("Jobs", &session, Section::Jobs, false, body))
}

fn parse_job(id: &str) -> WebResult<i32> {
    id.parse()
        .map_err(|_| WebError::NotFound(format!("job {id} not found")))
}

/// GET /jobs/{id}
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> WebResult<Markup> {
    let job_id = parse_job(&id)?;
    let job = state
        .backends
        .training(&session.credentials)
        .get_training_status(GetTrainingStatusRequest { job_id })
        .await?
        .into_inner();
    let meta = job.metadata.clone().unwrap_or_default();
    let body = html! {
        h1 { "Job " (job.job_id) " " small { (meta.name) } }
        p {
            span #job-status class={"state " (status_of(&job))} { (status_of(&job)) }
            " " span #job-position { @if job.position_in_queue > 0 { "position " (job.position_in_queue) " in the queue" } }
            " " span #job-message { (job.message) }
        }
        dl.lineage {
            dt { "algorithm" } dd { (meta.algorithm) }
            dt { "dataset" } dd { a href={"/datasets/" (meta.dataset_id)} { (meta.dataset_id) } " " code { (meta.train_data_version_hash) } }
            dt { "parameters" } dd.params { (parameters(&meta.parameters)) }
            dt { "run" } dd { a href={"/runs/" (job.job_id)} { "run " (job.job_id) } }
            @if !meta.base_run_id.is_empty() { dt { "base run" } dd { a href={"/runs/" (meta.base_run_id)} { (meta.base_run_id) } } }
        }
        @if !finished(&job) {
            form #cancel-form method="post" action={"/jobs/" (job.job_id) "/cancel"} {
                input type="hidden" name="csrf" value=(session.csrf);
                button.danger type="submit" { "Cancel job" }
            }
        }
        h2 { "Log" }
        pre #job-log data-job=(job.job_id) data-live=(if finished(&job) { "false" } else { "true" }) {}
    };
    Ok(page(
        &format!("Job {}", job.job_id),
        &session,
        Section::Jobs,
        false,
        body,
    ))
}

/// POST /jobs/{id}/cancel
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> WebResult<Redirect> {
    session.check_csrf(&headers, form.csrf.as_deref())?;
    let job_id = parse_job(&id)?;
    state
        .backends
        .training(&session.credentials)
        .cancel_training_job(GetTrainingStatusRequest { job_id })
        .await?;
    Ok(Redirect::to(&format!("/jobs/{job_id}")))
}
