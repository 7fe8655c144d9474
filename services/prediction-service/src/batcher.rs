//! Micro-batching: concurrent requests for one model are answered by one batched forward pass
//! on a blocking thread, so the matrix work is shared instead of repeated per request. A lone
//! request goes through at once as a batch of one; nothing waits for a batch to fill. A model
//! whose prediction takes microseconds (the embedding bag on the CPU) has no worker: each call
//! computes its own answer in its own task, with no queue or channel between.

use std::sync::Arc;

use automl_text_classification::Prediction;
use automl_text_classification::serving::AnyClassifier;
use tokio::sync::{mpsc, oneshot};

use crate::error::PredictError;

/// Most documents in one forward pass.
const MAX_BATCH: usize = 64;
/// Requests waiting for the worker; senders wait (briefly) when it is full.
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<Prediction, PredictError>>;

/// The queue in front of one model's batching worker. The worker stops when the last handle
/// is dropped (the model was evicted).
#[derive(Debug, Clone)]
pub struct Batcher(Mode);

#[derive(Debug, Clone)]
enum Mode {
    /// Each call computes its prediction itself.
    Inline {
        /// The model.
        classifier: Arc<AnyClassifier>,
        /// How many labels an answer carries.
        top_k: usize,
    },
    /// Calls queue for the model's batching worker.
    Worker {
        /// The worker's queue.
        requests: mpsc::Sender<(String, Reply)>,
    },
}

impl Batcher {
    /// Starts the worker of `classifier` (none when it answers inline), answering with the
    /// `top_k` best labels.
    pub fn start(classifier: Arc<AnyClassifier>, top_k: usize) -> Self {
        if classifier.answers_inline() {
            return Self(Mode::Inline { classifier, top_k });
        }
        let (requests, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(work(classifier, top_k, receiver));
        Self(Mode::Worker { requests })
    }

    /// The prediction for `document`.
    pub async fn predict(&self, document: String) -> Result<Prediction, PredictError> {
        let requests = match &self.0 {
            Mode::Inline { classifier, top_k } => {
                return classifier
                    .predict_batch(&[document], *top_k)
                    .map_err(|err| PredictError::Internal(format!("inference: {err}")))?
                    .pop()
                    .ok_or_else(|| PredictError::Internal("inference: no prediction".into()));
            }
            Mode::Worker { requests } => requests,
        };
        let (reply, answer) = oneshot::channel();
        requests
            .send((document, reply))
            .await
            .map_err(|_| PredictError::Internal("the model's worker stopped".into()))?;
        answer
            .await
            .map_err(|_| PredictError::Internal("the model's worker dropped a request".into()))?
    }
}

async fn work(
    classifier: Arc<AnyClassifier>,
    top_k: usize,
    mut receiver: mpsc::Receiver<(String, Reply)>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (documents, replies): (Vec<String>, Vec<Reply>) = batch.into_iter().unzip();
        // Only models that take milliseconds have a worker (cheap ones answer inline, see
        // `AnyClassifier::answers_inline`): every batch runs on a blocking thread.
        let model = Arc::clone(&classifier);
        let outcome =
            tokio::task::spawn_blocking(move || model.predict_batch(&documents, top_k)).await;
        match outcome {
            Ok(Ok(predictions)) => {
                for (reply, prediction) in replies.into_iter().zip(predictions) {
                    let _ = reply.send(Ok(prediction));
                }
            }
            Ok(Err(err)) => {
                for reply in replies {
                    let _ = reply.send(Err(PredictError::Internal(format!("inference: {err}"))));
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(PredictError::Internal(format!(
                        "inference task: {err}"
                    ))));
                }
            }
        }
    }
}
