//! Models: the artifacts with their versions, which are loaded in prediction-service, and a
//! predict box.

use std::collections::HashSet;
use std::sync::Arc;

use automl_proto::metadata_store::ListArtifactsRequest;
use automl_proto::prediction::{ListLoadedModelsRequest, PredictRequest};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::layout::{Section, page};
use super::{pager, time};
use crate::AppState;
use crate::error::WebResult;
use crate::session::Session;

/// `?page=` of the models page.
#[derive(Debug, Deserialize, Default)]
pub struct ModelsQuery {
    #[serde(default)]
    page: u32,
    #[serde(default)]
    name: String,
}

/// GET /models
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    Query(query): Query<ModelsQuery>,
) -> WebResult<Markup> {
    let size = state.page_size;
    let artifacts = state
        .backends
        .metadata(&session.credentials)
        .list_artifacts(ListArtifactsRequest {
            name: query.name.clone(),
            limit: size as i32,
            index: query.page.saturating_mul(size) as i32,
        })
        .await?
        .into_inner();
    let loaded = state
        .backends
        .prediction(&session.credentials)
        .list_loaded_models(ListLoadedModelsRequest {})
        .await?
        .into_inner()
        .models;
    let loaded_runs: HashSet<&str> = loaded.iter().map(|m| m.run_id.as_str()).collect();
    let body = html! {
        h1 { "Models" }
        section.predict {
            h2 { "Predict" }
            form #predict-form {
                label for="predict-run" { "Model (run)" }
                select #predict-run name="run_id" {
                    @for a in &artifacts.artifacts {
                        option value=(a.run_id) { "run " (a.run_id) " · " (a.name) " v" (a.version) }
                    }
                }
                label for="predict-document" { "Sentence" }
                input #predict-document name="document" placeholder="what is my account balance" required;
                button #predict-button type="submit" { "Predict" }
            }
            div #predict-result aria-live="polite" {}
        }
        h2 { "Loaded in prediction-service (" (loaded.len()) ")" }
        div.table-wrap { table #loaded-models {
            thead { tr { th { "run" } th { "model" } th { "algorithm" } th.num { "labels" } th.num { "size" } } }
            tbody { @for m in &loaded { tr {
                td { a href={"/runs/" (m.run_id)} { (m.run_id) } }
                td { (m.model_name) " v" (m.model_version) }
                td { (m.algorithm) }
                td.num { (m.labels) }
                td.num { (format!("{:.1} MB", m.bytes as f64 / 1e6)) }
            } } }
        } }
        h2 { "Artifacts" }
        div.table-wrap { table #artifacts {
            thead { tr { th { "model" } th.num { "version" } th { "run" } th { "algorithm" } th { "registered" } th { "loaded" } } }
            tbody { @for a in &artifacts.artifacts { tr data-run=(a.run_id) {
                td { a href={"/models?name=" (a.name)} { (a.name) } }
                td.num { (a.version) }
                td { a href={"/runs/" (a.run_id)} { (a.run_id) } }
                td { (a.algorithm) }
                td { (time(&a.created_at)) }
                td { @if loaded_runs.contains(a.run_id.as_str()) { span.state.succeeded { "loaded" } } }
            } } }
        } }
        (pager(&format!("/models?name={}", query.name), query.page, size, artifacts.total))
    };
    Ok(page("Models", &session, Section::Models, false, body))
}

/// The predict box's request.
#[derive(Debug, Deserialize)]
pub struct PredictBody {
    run_id: String,
    document: String,
}

/// One label and its score.
#[derive(Debug, Serialize)]
pub struct Scored {
    label: String,
    score: f32,
}

/// The predict box's answer: what `Predict` answered.
#[derive(Debug, Serialize)]
pub struct PredictAnswer {
    label: String,
    score: f32,
    top: Vec<Scored>,
    model_version: String,
}

/// POST /predict (JSON, from the predict box; carries the cross-site token as a header).
pub async fn predict(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Json(body): Json<PredictBody>,
) -> WebResult<Json<PredictAnswer>> {
    session.check_csrf(&headers, None)?;
    let answer = state
        .backends
        .prediction(&session.credentials)
        .predict(PredictRequest {
            run_id: body.run_id,
            document: body.document,
        })
        .await?
        .into_inner();
    Ok(Json(PredictAnswer {
        label: answer.label,
        score: answer.score,
        top: answer
            .top
            .into_iter()
            .map(|t| Scored {
                label: t.label,
                score: t.score,
            })
            .collect(),
        model_version: answer.model_version,
    }))
}
