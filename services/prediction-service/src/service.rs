//! Predict: validate, admit (bounded in-flight calls), resolve the artifact, then answer with
//! the built-in classifier on a blocking thread or forward to an external predictor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use automl_proto::prediction::PredictorPredictRequest;
use automl_proto::prediction::predictor_client::PredictorClient;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

use crate::cache::{LoadedModelInfo, ModelCache};
use crate::config::PredictionConfig;
use crate::error::PredictError;
use crate::resolver::Resolver;

/// Longest run id accepted.
const MAX_RUN_ID: usize = 128;

/// A label with its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Label name.
    pub label: String,
    /// Probability.
    pub score: f32,
}

/// The answer to one Predict call.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `{"result": "<label>"}`, or an external predictor's response text.
    pub response: String,
    /// Best label (empty when an external predictor's answer has none).
    pub label: String,
    /// Its probability (0 when unknown).
    pub score: f32,
    /// The best labels, best first.
    pub top: Vec<Scored>,
    /// Artifact version that answered.
    pub model_version: String,
}

/// prediction-service's operations.
#[derive(Debug)]
pub struct Predictions {
    resolver: Resolver,
    /// The model cache (its stats are public for tests and operators).
    pub cache: ModelCache,
    admission: Arc<Semaphore>,
    external: HashMap<String, Channel>,
    config: PredictionConfig,
}

impl Predictions {
    /// The service over a resolver and a cache.
    pub fn new(
        resolver: Resolver,
        cache: ModelCache,
        config: PredictionConfig,
    ) -> Result<Self, PredictError> {
        let mut external = HashMap::new();
        for (algorithm, url) in &config.external_predictors {
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|err| PredictError::InvalidArgument(format!("predictor `{url}`: {err}")))?
                .connect_lazy();
            external.insert(algorithm.clone(), channel);
        }
        Ok(Self {
            resolver,
            cache,
            admission: Arc::new(Semaphore::new(config.max_in_flight)),
            external,
            config,
        })
    }

    /// Predict: the label of `document` according to the model of run `run_id`.
    pub async fn predict(
        &self,
        tenant: &str,
        run_id: &str,
        document: String,
        deadline: Option<Duration>,
    ) -> Result<Answer, PredictError> {
        check_run_id(run_id)?;
        if document.trim().is_empty() {
            return Err(PredictError::InvalidArgument("document is required".into()));
        }
        if document.len() > self.config.max_document_bytes {
            return Err(PredictError::InvalidArgument(format!(
                "document is {} bytes, longer than the limit of {} bytes",
                document.len(),
                self.config.max_document_bytes
            )));
        }
        let _permit = self
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| PredictError::Overloaded(self.config.max_in_flight))?;
        let artifact = self.resolver.resolve(tenant, run_id).await?;
        if let Some(channel) = self.external.get(&artifact.algorithm) {
            // Boxed: a client call's state is large, and inline it would make every Predict's
            // future (moved on each call) as large.
            return Box::pin(self.forward(
                channel.clone(),
                run_id,
                document,
                deadline,
                &artifact.version,
            ))
            .await;
        }
        if !self.config.builtin_algorithms.contains(&artifact.algorithm) {
            return Err(PredictError::NoPredictor(artifact.algorithm.clone()));
        }
        let model = self.cache.get(&artifact).await?;
        let version = model.version.clone();
        let prediction = model.batcher.predict(document).await?;
        Ok(Answer {
            response: result_json(&prediction.label),
            label: prediction.label,
            score: prediction.score,
            top: prediction
                .top
                .into_iter()
                .map(|s| Scored {
                    label: s.label,
                    score: s.score,
                })
                .collect(),
            model_version: version,
        })
    }

    /// ListLoadedModels: `tenant`'s models in this replica's memory, most recently used first.
    pub fn loaded_models(&self, tenant: &str) -> Vec<LoadedModelInfo> {
        self.cache.loaded_models(tenant)
    }

    async fn forward(
        &self,
        channel: Channel,
        run_id: &str,
        document: String,
        deadline: Option<Duration>,
        version: &str,
    ) -> Result<Answer, PredictError> {
        let timeout = deadline.map_or(self.config.predictor_timeout(), |d| {
            d.min(self.config.predictor_timeout())
        });
        let mut request = tonic::Request::new(PredictorPredictRequest {
            run_id: run_id.to_string(),
            document,
        });
        request.set_timeout(timeout);
        let mut client = PredictorClient::new(channel);
        let call = client.predictor_predict(request);
        let response = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(PredictError::DeadlineExceeded),
            // tonic's own client timeout answers CANCELLED "Timeout expired"; either way the
            // deadline passed, which is the caller's to know, not an internal error.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                return Err(PredictError::DeadlineExceeded);
            }
            Ok(Err(status)) => return Err(PredictError::Predictor(status.message().to_string())),
            Ok(Ok(response)) => response.into_inner().response,
        };
        let label = serde_json::from_str::<serde_json::Value>(&response)
            .ok()
            .and_then(|v| v.get("result").and_then(|r| r.as_str()).map(str::to_string))
            .unwrap_or_default();
        Ok(Answer {
            response,
            label,
            score: 0.0,
            top: Vec::new(),
            model_version: version.to_string(),
        })
    }
}

/// `{"result":"<label>"}`, MiniAutoML's response text.
fn result_json(label: &str) -> String {
    #[derive(serde::Serialize)]
    struct Response<'a> {
        result: &'a str,
    }
    serde_json::to_string(&Response { result: label }).unwrap_or_default()
}

fn check_run_id(run_id: &str) -> Result<(), PredictError> {
    if run_id.is_empty() {
        return Err(PredictError::InvalidArgument("runId is required".into()));
    }
    let safe = run_id.len() <= MAX_RUN_ID
        && !run_id.starts_with('.')
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !safe {
        return Err(PredictError::InvalidArgument(format!(
            "runId must be 1 to {MAX_RUN_ID} letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}
