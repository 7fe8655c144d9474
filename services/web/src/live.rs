//! Server-sent events bridged from the services' streams: a run's epochs (`WatchRun`), a
//! job's status (`WatchTrainingStatus`) and log lines (`GetTrainingLogs`). Each stream ends
//! with an `end` event, after which the page closes it (an EventSource would reconnect).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use automl_proto::metadata_store::{EpochInfo, GetRunStatusRequest, RunEventKind};
use automl_proto::training::{GetTrainingLogsRequest, GetTrainingStatusRequest, TrainingStatus};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, stream};

use crate::AppState;
use crate::error::{WebError, WebResult};
use crate::session::Session;

type Events = Response;

fn sse(events: impl Stream<Item = Event> + Send + 'static) -> Events {
    let end = stream::once(async { Event::default().event("end").data("end") });
    Sse::new(events.chain(end).map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// An epoch as the charts read it: numeric metrics only.
pub fn epoch_json(epoch: &EpochInfo) -> serde_json::Value {
    let metrics: serde_json::Map<String, serde_json::Value> = epoch
        .metrics
        .iter()
        .filter_map(|(name, value)| {
            let number = value.trim().parse::<f64>().ok().filter(|v| v.is_finite())?;
            Some((name.clone(), serde_json::json!(number)))
        })
        .collect();
    serde_json::json!({ "epoch": epoch.epoch_id, "metrics": metrics })
}

fn error_event(status: &tonic::Status) -> Event {
    Event::default().event("failure").data(status.message())
}

/// GET /runs/{id}/events: `epoch` per new epoch, then `state` when the run ends.
pub async fn run_events(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(run_id): Path<String>,
) -> WebResult<Events> {
    let watch = state
        .backends
        .metadata(&session.credentials)
        .watch_run(GetRunStatusRequest { run_id })
        .await?
        .into_inner();
    let events = watch.filter_map(|event| async move {
        match event {
            Ok(event) => match RunEventKind::try_from(event.kind) {
                Ok(RunEventKind::Epoch) => event.epoch.map(|epoch| {
                    Event::default()
                        .event("epoch")
                        .data(epoch_json(&epoch).to_string())
                }),
                Ok(RunEventKind::End) => event.run_info.map(|run| {
                    let body = serde_json::json!({
                        "state": crate::pages::runs::run_state(&run),
                        "message": run.message,
                    });
                    Event::default().event("state").data(body.to_string())
                }),
                _ => None,
            },
            Err(status) => Some(error_event(&status)),
        }
    });
    Ok(sse(events))
}

/// A job's status as the page reads it.
fn status_json(job: &automl_proto::training::GetTrainingStatusResponse) -> String {
    let status = TrainingStatus::try_from(job.status)
        .map(crate::pages::jobs::status_name)
        .unwrap_or("unknown");
    serde_json::json!({
        "status": status,
        "message": job.message,
        "position": job.position_in_queue,
    })
    .to_string()
}

/// GET /jobs/{id}/events: `status` on every change and `log` per trainer line (its id is the
/// line number, so a reconnecting browser continues after the last line it has).
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> WebResult<Events> {
    let job_id: i32 = job_id
        .parse()
        .map_err(|_| WebError::NotFound(format!("job {job_id} not found")))?;
    let from_line = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |last| last + 1);
    let mut training = state.backends.training(&session.credentials);
    let statuses = training
        .watch_training_status(GetTrainingStatusRequest { job_id })
        .await?
        .into_inner()
        .map(|job| match job {
            Ok(job) => Event::default().event("status").data(status_json(&job)),
            Err(status) => error_event(&status),
        });
    let logs = training
        .get_training_logs(GetTrainingLogsRequest { job_id, from_line })
        .await?
        .into_inner()
        .map(|line| match line {
            Ok(line) => Event::default()
                .event("log")
                .id(line.line_number.to_string())
                .data(line.text.replace(['\r', '\n'], " ")),
            Err(status) => error_event(&status),
        });
    Ok(sse(stream::select(statuses, logs)))
}
