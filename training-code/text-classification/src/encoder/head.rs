//! The classification head on the sentence embedding: `scale · embedding` → Linear, or →
//! Linear → ReLU → Linear with a hidden layer. Embeddings are unit vectors, so they are
//! scaled by √width to give the head inputs of unit variance per dimension.
//!
//! Weights are named `fc1.weight`, `fc1.bias` (hidden layer only), `out.weight`, `out.bias`,
//! `out × in` as in PyTorch.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module, VarMap};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::{SplitMix64, Stream};

/// The head's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Embedding width.
    pub input: usize,
    /// Hidden layer width; 0 for a linear head.
    pub hidden: usize,
    /// Number of classes.
    pub classes: usize,
}

impl HeadConfig {
    /// The factor applied to the embedding.
    pub fn scale(&self) -> f64 {
        (self.input as f64).sqrt()
    }

    /// `(name, [out, in])` of every weight and bias.
    pub fn shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let mut shapes = Vec::new();
        let last_in = if self.hidden > 0 {
            shapes.push(("fc1.weight", vec![self.hidden, self.input]));
            shapes.push(("fc1.bias", vec![self.hidden]));
            self.hidden
        } else {
            self.input
        };
        shapes.push(("out.weight", vec![self.classes, last_in]));
        shapes.push(("out.bias", vec![self.classes]));
        shapes
    }
}

/// The head's layers.
#[derive(Debug, Clone)]
pub struct Head {
    /// Its sizes.
    pub config: HeadConfig,
    fc1: Option<Linear>,
    out: Linear,
}

impl Head {
    /// A head over the given tensors (keyed as in [`HeadConfig::shapes`]), checked against
    /// the configuration.
    pub fn from_tensors(config: HeadConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let tensor = tensors
                .get(name)
                .ok_or_else(|| Error::Artifact(format!("head: missing {name}")))?;
            if tensor.dims() != shape {
                return Err(Error::Artifact(format!(
                    "head: {name} is {:?}, expected {shape:?}",
                    tensor.dims()
                )));
            }
            Ok(tensor.clone())
        };
        let shapes: HashMap<&str, Vec<usize>> = config.shapes().into_iter().collect();
        let layer = |name: &str| -> Result<Linear> {
            let weight = format!("{name}.weight");
            let bias = format!("{name}.bias");
            Ok(Linear::new(
                take(&weight, &shapes[weight.as_str()])?,
                Some(take(&bias, &shapes[bias.as_str()])?),
            ))
        };
        let fc1 = if config.hidden > 0 {
            Some(layer("fc1")?)
        } else {
            None
        };
        Ok(Self {
            config,
            fc1,
            out: layer("out")?,
        })
    }

    /// A trainable head with seeded initial weights (uniform in ±1/√in, as PyTorch's
    /// `nn.Linear`), its variables registered in `varmap`. `start` replaces some of them
    /// (fine-tuning): rows of a base head's output layer, say.
    pub fn trainable(
        config: HeadConfig,
        seed: u64,
        varmap: &VarMap,
        device: &Device,
        start: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        let mut rng = SplitMix64::new(seed, Stream::Init);
        let mut tensors = HashMap::new();
        let mut vars = varmap
            .data()
            .lock()
            .map_err(|_| Error::Stopped("variable map lock poisoned".into()))?;
        for (name, shape) in config.shapes() {
            let fan_in = if name.starts_with("fc1") {
                config.input
            } else if config.hidden > 0 {
                config.hidden
            } else {
                config.input
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count).map(|_| rng.uniform(-bound, bound)).collect();
            let mut tensor = Tensor::from_vec(values, shape.as_slice(), device)?;
            if let Some(given) = start.get(name) {
                if given.dims() != shape.as_slice() {
                    return Err(Error::Artifact(format!(
                        "head: {name} is {:?}, expected {shape:?}",
                        given.dims()
                    )));
                }
                tensor = given.to_device(device)?.to_dtype(DType::F32)?;
            }
            let var = Var::from_tensor(&tensor)?;
            tensors.insert(name.to_string(), var.as_tensor().clone());
            vars.insert(name.to_string(), var);
        }
        drop(vars);
        Self::from_tensors(config, &tensors)
    }

    /// Class scores (logits) of a batch of embeddings, `(batch, classes)`.
    pub fn forward(&self, embeddings: &Tensor) -> Result<Tensor> {
        let x = (embeddings * self.config.scale())?;
        let x = match &self.fc1 {
            Some(fc1) => fc1.forward(&x)?.relu()?,
            None => x,
        };
        Ok(self.out.forward(&x)?)
    }

    /// The weights by name, for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::new();
        if let Some(fc1) = &self.fc1 {
            named.push(("fc1.weight".to_string(), fc1.weight().clone()));
            if let Some(bias) = fc1.bias() {
                named.push(("fc1.bias".to_string(), bias.clone()));
            }
        }
        named.push(("out.weight".to_string(), self.out.weight().clone()));
        if let Some(bias) = self.out.bias() {
            named.push(("out.bias".to_string(), bias.clone()));
        }
        named
    }
}
