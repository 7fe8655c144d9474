//! Either kind of model behind one interface, for prediction-service: the embedding-bag
//! [`Classifier`] or an [`EncoderClassifier`].

use crate::encoder::EncoderClassifier;
use crate::error::Result;
use crate::inference::{Classifier, Prediction};

/// A loaded model of any algorithm this crate trains.
#[derive(Debug, Clone)]
pub enum AnyClassifier {
    /// `intent-classification`.
    Bag(Classifier),
    /// `intent-classification-encoder`.
    Encoder(EncoderClassifier),
}

impl AnyClassifier {
    /// Predictions for many texts, in order.
    pub fn predict_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        top_k: usize,
    ) -> Result<Vec<Prediction>> {
        match self {
            Self::Bag(model) => model.predict_batch(texts, top_k),
            Self::Encoder(model) => model.predict_batch(texts, top_k),
        }
    }

    /// Whether one document's prediction is cheap enough (microseconds, on host arrays) to
    /// compute in the caller's task: batching concurrent calls then gains nothing and the hops
    /// to a batching worker cost more than the arithmetic.
    pub fn answers_inline(&self) -> bool {
        match self {
            Self::Bag(model) => model.on_host(),
            Self::Encoder(_) => false,
        }
    }

    /// Label names in output order.
    pub fn classes(&self) -> &[String] {
        match self {
            Self::Bag(model) => model.classes(),
            Self::Encoder(model) => model.classes(),
        }
    }
}

impl From<Classifier> for AnyClassifier {
    fn from(model: Classifier) -> Self {
        Self::Bag(model)
    }
}

impl From<EncoderClassifier> for AnyClassifier {
    fn from(model: EncoderClassifier) -> Self {
        Self::Encoder(model)
    }
}
