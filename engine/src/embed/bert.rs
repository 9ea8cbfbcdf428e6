//! A BERT sentence encoder on the CPU (candle): tokenizer, forward pass, mean pooling over
//! the attention mask, L2 normalization. It loads sentence-transformers models such as
//! all-MiniLM-L6-v2 from a directory holding `config.json`, `tokenizer.json` and
//! `model.safetensors`.

use super::Embedder;
use crate::error::{Error, Result};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::LayerNorm;
use std::collections::HashMap;
use std::path::Path;

/// Longest input, in tokens (longer texts are truncated, as sentence-transformers does).
pub const MAX_TOKENS: usize = 256;

#[derive(serde::Deserialize)]
struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    hidden_act: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_positions() -> usize {
    512
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct BertEmbedder {
    name: String,
    tokenizer: tokenizers::Tokenizer,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("name", &self.name)
            .field("hidden", &self.hidden)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

fn model_error(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::invalid("embedding_model", format!("{}: {what}", dir.display()))
}

impl BertEmbedder {
    /// Loads the model in `dir`.
    ///
    /// # Errors
    /// `InvalidArgument` (field `embedding_model`) naming the file that is missing or does
    /// not parse, or the weight that is missing.
    pub fn load(dir: &Path) -> Result<Self> {
        let config: Config = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).map_err(|e| model_error(dir, format!("config.json: {e}")))?,
        )
        .map_err(|e| model_error(dir, format!("config.json: {e}")))?;
        if let Some(act) = config.hidden_act.as_deref().filter(|a| *a != "gelu") {
            return Err(model_error(dir, format!("hidden_act {act:?} is not supported (gelu is)")));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(model_error(dir, "hidden_size is not a multiple of num_attention_heads"));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| model_error(dir, format!("tokenizer.json: {e}")))?;
        let max_tokens = MAX_TOKENS.min(config.max_position_embeddings);
        // The shipped tokenizer pads and truncates to a fixed 128: pad each batch to its
        // longest input instead, and truncate at the model's limit.
        tokenizer.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::BatchLongest,
            ..tokenizers::PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| model_error(dir, format!("truncation: {e}")))?;
        let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .map_err(|e| model_error(dir, format!("model.safetensors: {e}")))?;
        let mut w = Weights { dir, tensors: weights };
        let eps = config.layer_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    query: w.linear(&format!("{p}.attention.self.query"))?,
                    key: w.linear(&format!("{p}.attention.self.key"))?,
                    value: w.linear(&format!("{p}.attention.self.value"))?,
                    attention_out: w.linear(&format!("{p}.attention.output.dense"))?,
                    attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
                    intermediate: w.linear(&format!("{p}.intermediate.dense"))?,
                    output: w.linear(&format!("{p}.output.dense"))?,
                    output_norm: w.norm(&format!("{p}.output.LayerNorm"), eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let name = dir.file_name().map_or_else(|| "bert".to_string(), |n| n.to_string_lossy().into_owned());
        Ok(BertEmbedder {
            name,
            tokenizer,
            word: w.take("embeddings.word_embeddings.weight")?,
            position: w.take("embeddings.position_embeddings.weight")?,
            token_type: w.take("embeddings.token_type_embeddings.weight")?,
            embedding_norm: w.norm("embeddings.LayerNorm", eps)?,
            layers,
            heads: config.num_attention_heads,
            hidden: config.hidden_size,
            max_tokens,
        })
    }

    fn forward(&self, texts: &[&str]) -> candle_core::Result<Vec<Vec<f32>>> {
        // 256 tokens are well within the first 16 KiB: do not tokenize megabytes to drop them.
        let texts: Vec<&str> = texts.iter().map(|t| head(t, 16 * 1024)).collect();
        let encodings =
            self.tokenizer.encode_batch(texts, true).map_err(|e| candle_core::Error::Msg(format!("tokenizer: {e}")))?;
        let b = encodings.len();
        let s = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).clamp(1, self.max_tokens);
        let mut ids = vec![0u32; b * s];
        let mut mask = vec![0f32; b * s];
        for (i, enc) in encodings.iter().enumerate() {
            for (j, (&id, &m)) in enc.get_ids().iter().zip(enc.get_attention_mask()).take(s).enumerate() {
                ids[i * s + j] = id;
                mask[i * s + j] = m as f32;
            }
        }
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(ids, b * s, &dev)?;
        let mask = Tensor::from_vec(mask, (b, s), &dev)?;
        let h = self.hidden;
        let mut x = self
            .word
            .index_select(&ids, 0)?
            .reshape((b, s, h))?
            .broadcast_add(&self.position.narrow(0, 0, s)?)?
            .broadcast_add(&self.token_type.get(0)?)?;
        x = self.embedding_norm.forward(&x)?;
        let d = h / self.heads;
        let scale = 1.0 / (d as f64).sqrt();
        // 0 where a token is attended, a large negative number on padding.
        let bias = ((mask.reshape((b, 1, 1, s))? - 1.0)? * 1e9)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, self.heads, d))?.transpose(1, 2)?.contiguous()
        };
        for layer in &self.layers {
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
            x = layer.attention_norm.forward(&(layer.attention_out.forward(&ctx)? + &x)?)?;
            let inner = gelu(&layer.intermediate.forward(&x)?)?;
            x = layer.output_norm.forward(&(layer.output.forward(&inner)? + &x)?)?;
        }
        let m = mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let pooled = summed.broadcast_div(&counts)?;
        let norms = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norms)?.to_dtype(DType::F32)?.to_vec2::<f32>()
    }
}

/// GELU, `x * Φ(x)` with the exact (erf) form BERT uses, elementwise in one tight loop:
/// candle's own goes through `tanhf` per element and took a quarter of the forward pass.
fn gelu(t: &Tensor) -> candle_core::Result<Tensor> {
    let shape = t.shape().clone();
    let mut values = t.flatten_all()?.to_vec1::<f32>()?;
    for x in &mut values {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
    Tensor::from_vec(values, shape, t.device())
}

/// erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7).
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-a * a).exp();
    if x < 0.0 { -y } else { y }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn head(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Embedder for BertEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.hidden
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.forward(texts).map_err(|e| Error::Index(format!("embedding failed: {e}")))
    }
}

/// A dense layer with its weight stored transposed, applied to all tokens of a batch as one
/// matrix product (candle's `Linear` runs one product per batch row on 3-D inputs).
struct Linear {
    /// `[in, out]`, contiguous.
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Linear { weight_t: weight.t()?.contiguous()?, bias })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let out = self.weight_t.dim(1)?;
        x.reshape((b * s, h))?.matmul(&self.weight_t)?.broadcast_add(&self.bias)?.reshape((b, s, out))
    }
}

/// The weights by name; BERT checkpoints sometimes prefix them with `bert.`.
struct Weights<'a> {
    dir: &'a Path,
    tensors: HashMap<String, Tensor>,
}

impl Weights<'_> {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let tensor = self.tensors.remove(name).or_else(|| self.tensors.remove(&format!("bert.{name}")));
        let tensor = tensor.ok_or_else(|| model_error(self.dir, format!("model.safetensors has no {name}")))?;
        tensor.to_dtype(DType::F32).map_err(|e| model_error(self.dir, format!("{name}: {e}")))
    }

    fn linear(&mut self, name: &str) -> Result<Linear> {
        let (weight, bias) = (self.take(&format!("{name}.weight"))?, self.take(&format!("{name}.bias"))?);
        Linear::new(weight, bias).map_err(|e| model_error(self.dir, format!("{name}: {e}")))
    }

    fn norm(&mut self, name: &str, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm::new(self.take(&format!("{name}.weight"))?, self.take(&format!("{name}.bias"))?, eps))
    }
}
