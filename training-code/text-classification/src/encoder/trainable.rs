//! The BERT forward pass for `FINETUNE=full`: the same computation as `candle-transformers`'
//! `BertModel` (the same tensor names, so the same `model.safetensors` loads into both), built
//! from operations that all have a backward pass.
//!
//! `candle-nn`'s fused layer norm (which `BertModel` uses whenever its input is contiguous) has
//! no backward pass (`apply_op3_no_bwd`): through `BertModel` no gradient reaches any weight
//! below the last layer norm, and the encoder would silently stay frozen. Here layer norm is
//! `candle_nn::ops::layer_norm_slow`, composed of differentiable operations. Frozen encoding
//! and serving keep `BertModel`; a test checks that both give the same embeddings.

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder, embedding, linear};
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::error::Result;

/// A layer norm whose gradient flows.
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm_slow(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    out: Linear,
    out_norm: Norm,
}

/// BERT with differentiable layer norms.
pub struct TrainableBert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
    act: HiddenAct,
}

impl TrainableBert {
    /// Its weights from `vb`, under the names `BertModel` uses.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let hidden = config.hidden_size;
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let attention = l.pp("attention");
            layers.push(Layer {
                query: linear(hidden, hidden, attention.pp("self.query"))?,
                key: linear(hidden, hidden, attention.pp("self.key"))?,
                value: linear(hidden, hidden, attention.pp("self.value"))?,
                attention_out: linear(hidden, hidden, attention.pp("output.dense"))?,
                attention_norm: Norm::load(
                    hidden,
                    config.layer_norm_eps,
                    attention.pp("output.LayerNorm"),
                )?,
                intermediate: linear(hidden, config.intermediate_size, l.pp("intermediate.dense"))?,
                out: linear(config.intermediate_size, hidden, l.pp("output.dense"))?,
                out_norm: Norm::load(hidden, config.layer_norm_eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(Self {
            word: embedding(config.vocab_size, hidden, e.pp("word_embeddings"))?,
            position: embedding(
                config.max_position_embeddings,
                hidden,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(
                config.type_vocab_size,
                hidden,
                e.pp("token_type_embeddings"),
            )?,
            embeddings_norm: Norm::load(hidden, config.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            heads: config.num_attention_heads,
            head_size: hidden / config.num_attention_heads,
            act: config.hidden_act,
        })
    }

    /// The last hidden states `(batch, tokens, hidden)`, as `BertModel::forward` computes them.
    pub fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let positions = Tensor::arange(0u32, tokens as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(types)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        // 0 where attended, the most negative float where masked, per key position.
        let mask = mask.to_dtype(DType::F32)?.reshape((batch, 1, 1, tokens))?;
        let mask = ((mask.ones_like()? - &mask)? * f64::from(f32::MIN))?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((batch, tokens, self.heads, self.head_size))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for layer in &self.layers {
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores =
                (q.matmul(&k.t()?)? / (self.head_size as f64).sqrt())?.broadcast_add(&mask)?;
            let probabilities = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let context = probabilities
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .flatten_from(D::Minus2)?;
            let attended = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context)? + &x)?)?;
            let inner = layer.intermediate.forward(&attended)?;
            let inner = match self.act {
                HiddenAct::Gelu => inner.gelu_erf()?,
                HiddenAct::GeluApproximate => inner.gelu()?,
                HiddenAct::Relu => inner.relu()?,
            };
            x = layer
                .out_norm
                .forward(&(layer.out.forward(&inner)? + &attended)?)?;
        }
        Ok(x)
    }
}
