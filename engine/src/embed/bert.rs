//! A BERT sentence encoder on the CPU: tokenizer, forward pass, mean pooling, L2
//! normalization. It loads sentence-transformers models such as all-MiniLM-L6-v2 from a
//! directory holding `config.json`, `tokenizer.json` and `model.safetensors`.
//!
//! Every text runs at its own length: the dense layers take all tokens of a batch as the
//! rows of one matrix, with no padding rows, and attention runs per text (in parallel across
//! texts) and per head. The matrix products are `gemm`'s (see `matmul.rs`); layer norm,
//! GELU and softmax are plain loops over rows.

use super::Embedder;
use super::matmul::{Mat, Packed, matmul};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// Longest input, in tokens (longer texts are truncated, as sentence-transformers does).
pub const MAX_TOKENS: usize = 256;

/// Rows handed to one thread by the elementwise passes (GELU, layer norm). Up to two tasks'
/// worth run on the calling thread: waking a worker costs more than a short text's pass.
const ROWS_PER_TASK: usize = 16;

/// Runs `work(first_row, rows)` over the rows (`width` values each) of `data`, in parallel
/// when there are enough of them.
fn for_rows(data: &mut [f32], width: usize, work: impl Fn(usize, &mut [f32]) + Sync) {
    if data.len() <= 2 * ROWS_PER_TASK * width {
        work(0, data);
    } else {
        data.par_chunks_mut(width * ROWS_PER_TASK).enumerate().for_each(|(i, rows)| work(i * ROWS_PER_TASK, rows));
    }
}

#[derive(serde::Deserialize)]
struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
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
    /// Query, key and value as one product: `[3 · hidden, hidden]`.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

/// A loaded BERT encoder.
pub struct BertEmbedder {
    name: String,
    tokenizer: tokenizers::Tokenizer,
    /// `[vocabulary, hidden]`.
    word: Vec<f32>,
    /// `[max_tokens, hidden]`.
    position: Vec<f32>,
    /// The embedding of token type 0 (sentence encoders see one segment).
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    max_tokens: usize,
    /// The encoder's own threads: a graph build keeps rayon's global pool busy for seconds
    /// at a time, and a query's embedding must not queue behind it.
    pool: rayon::ThreadPool,
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
    /// not parse, or the weight that is missing or has the wrong shape or type.
    pub fn load(dir: &Path) -> Result<Self> {
        let config: Config = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).map_err(|e| model_error(dir, format!("config.json: {e}")))?,
        )
        .map_err(|e| model_error(dir, format!("config.json: {e}")))?;
        if let Some(act) = config.hidden_act.as_deref().filter(|a| *a != "gelu") {
            return Err(model_error(dir, format!("hidden_act {act:?} is not supported (gelu is)")));
        }
        if config.hidden_size == 0 || config.intermediate_size == 0 {
            return Err(model_error(dir, "hidden_size and intermediate_size must not be 0"));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(model_error(dir, "hidden_size is not a multiple of num_attention_heads"));
        }
        let max_tokens = MAX_TOKENS.min(config.max_position_embeddings);
        if max_tokens < 2 {
            return Err(model_error(dir, "max_position_embeddings must leave room for [CLS] and [SEP]"));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| model_error(dir, format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer pads and truncates to a fixed 128: no padding (each text runs
        // at its own length), and truncation at the model's limit.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| model_error(dir, format!("truncation: {e}")))?;
        let bytes = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| model_error(dir, format!("model.safetensors: {e}")))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| model_error(dir, format!("model.safetensors: {e}")))?;
        let w = Weights { dir, tensors };
        let (h, inner) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps as f32;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let qkv = ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}"));
                Ok(Layer {
                    qkv: w.dense(&qkv, h, h)?,
                    attention_out: w.dense(&[format!("{p}.attention.output.dense")], h, h)?,
                    attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    intermediate: w.dense(&[format!("{p}.intermediate.dense")], h, inner)?,
                    output: w.dense(&[format!("{p}.output.dense")], inner, h)?,
                    output_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let word = w.values("embeddings.word_embeddings.weight", &[0, h])?;
        let mut position = w.values("embeddings.position_embeddings.weight", &[0, h])?;
        if position.len() < max_tokens * h {
            return Err(model_error(
                dir,
                format!("embeddings.position_embeddings.weight has fewer than {max_tokens} rows"),
            ));
        }
        position.truncate(max_tokens * h);
        let mut token_type = w.values("embeddings.token_type_embeddings.weight", &[0, h])?;
        token_type.truncate(h);
        let name = dir.file_name().map_or_else(|| "bert".to_string(), |n| n.to_string_lossy().into_owned());
        Ok(BertEmbedder {
            name,
            tokenizer,
            word,
            position,
            token_type,
            embedding_norm: w.norm("embeddings.LayerNorm", h, eps)?,
            layers,
            heads: config.num_attention_heads,
            hidden: h,
            max_tokens,
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(std::thread::available_parallelism().map_or(1, usize::from))
                .thread_name(|i| format!("engram-embed-{i}"))
                .build()
                .map_err(|e| Error::Index(format!("embedding threads: {e}")))?,
        })
    }

    /// Token ids of each text (special tokens added, truncated to the model's limit).
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        // 256 tokens are well within the first 16 KiB: do not tokenize megabytes to drop them.
        let texts: Vec<&str> = texts.iter().map(|t| head(t, 16 * 1024)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| Error::Index(format!("embedding failed: tokenizer: {e}")))?;
        let vocabulary = self.word.len() / self.hidden;
        encodings
            .iter()
            .map(|e| {
                let ids = &e.get_ids()[..e.get_ids().len().min(self.max_tokens)];
                match ids.iter().find(|&&id| id as usize >= vocabulary) {
                    Some(id) => Err(Error::Index(format!(
                        "embedding failed: the tokenizer produced id {id}, past the model's vocabulary of {vocabulary}"
                    ))),
                    None => Ok(ids.to_vec()),
                }
            })
            .collect()
    }

    fn forward(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        let h = self.hidden;
        // Text i owns rows spans[i].0 .. spans[i].1 of every activation matrix.
        let mut spans = Vec::with_capacity(ids.len());
        let mut rows = 0;
        for t in &ids {
            spans.push((rows, rows + t.len()));
            rows += t.len();
        }
        let mut x = Vec::with_capacity(rows * h);
        for t in &ids {
            for (j, &id) in t.iter().enumerate() {
                let (word, position) = (&self.word[id as usize * h..][..h], &self.position[j * h..][..h]);
                x.extend(word.iter().zip(position).zip(&self.token_type).map(|((w, p), t)| w + p + t));
            }
        }
        self.embedding_norm.apply(&mut x, None);
        let mut scratch = Scratch::default();
        for layer in &self.layers {
            self.layer(layer, &mut x, &spans, &mut scratch);
        }
        Ok(spans
            .iter()
            .map(|&(start, end)| {
                let mut pooled = vec![0f32; h];
                for row in x[start * h..end * h].chunks_exact(h) {
                    pooled.iter_mut().zip(row).for_each(|(p, v)| *p += v);
                }
                // The mean's division by the length is left out: normalization cancels it.
                // A text with no tokens (a tokenizer without special tokens) pools to zero.
                let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                pooled.iter_mut().for_each(|p| *p /= norm);
                pooled
            })
            .collect())
    }

    /// One encoder layer over every token of the batch, in place.
    fn layer(&self, layer: &Layer, x: &mut [f32], spans: &[(usize, usize)], s: &mut Scratch) {
        let h = self.hidden;
        let rows = x.len() / h;
        layer.qkv.forward(x, rows, &mut s.qkv);
        s.context.resize(rows * h, 0.0);
        self.attention(&s.qkv, spans, &mut s.context);
        layer.attention_out.product(&s.context, rows, &mut s.dense);
        layer.attention_norm.add_and_apply(&s.dense, &layer.attention_out.bias, x);
        layer.intermediate.product(x, rows, &mut s.inner);
        let bias = &layer.intermediate.bias;
        for_rows(&mut s.inner, bias.len(), |_, rows| {
            for row in rows.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v = gelu(*v + b));
            }
        });
        layer.output.product(&s.inner, rows, &mut s.dense);
        layer.output_norm.add_and_apply(&s.dense, &layer.output.bias, x);
    }

    /// Scaled dot-product attention of each text with itself, per head: `qkv` holds each
    /// token's query, key and value side by side; `context` receives each token's output.
    fn attention(&self, qkv: &[f32], spans: &[(usize, usize)], context: &mut [f32]) {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        // Split the context into each text's rows so that texts run in parallel.
        let mut parts = Vec::with_capacity(spans.len());
        let mut rest = context;
        for &(start, end) in spans {
            let (mine, after) = rest.split_at_mut((end - start) * h);
            parts.push((start, end, mine));
            rest = after;
        }
        let run = |(start, end, out): (usize, usize, &mut [f32])| {
            let len = end - start;
            if len == 0 {
                return;
            }
            let tokens = &qkv[start * 3 * h..end * 3 * h];
            let mut scores = vec![0f32; len * len];
            for head in 0..self.heads {
                let view = |offset: usize| Mat {
                    data: &tokens[offset + head * d..],
                    rows: len,
                    cols: d,
                    row_stride: 3 * h,
                    col_stride: 1,
                };
                let (q, k, v) = (view(0), view(h), view(2 * h));
                matmul(&mut scores, len, q, k.t(), scale, false);
                scores.chunks_exact_mut(len).for_each(softmax);
                matmul(&mut out[head * d..], h, Mat::rows(&scores, len, len), v, 1.0, false);
            }
        };
        // One text (a query) runs on the calling thread.
        if parts.len() == 1 {
            parts.into_iter().for_each(run);
        } else {
            parts.into_par_iter().for_each(run);
        }
    }
}

/// Activation buffers reused across layers.
#[derive(Default)]
struct Scratch {
    qkv: Vec<f32>,
    context: Vec<f32>,
    dense: Vec<f32>,
    inner: Vec<f32>,
}

/// A dense layer: `y = x · Wᵀ + b`.
struct Dense {
    weight: Packed,
    bias: Vec<f32>,
}

impl Dense {
    /// `out = x · Wᵀ`, without the bias.
    fn product(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        out.resize(rows * self.weight.outputs(), 0.0);
        self.weight.product(x, rows, out);
    }

    /// `out = x · Wᵀ + b`.
    fn forward(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        self.product(x, rows, out);
        for row in out.chunks_exact_mut(self.bias.len()) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
        }
    }
}

/// Layer normalization over each row, with a learned scale and shift.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// `x = norm(x + y + b)` row by row (the residual connection and the dense layer's
    /// bias folded in), or `x = norm(x)` when `add` is `None`.
    fn apply(&self, x: &mut [f32], add: Option<(&[f32], &[f32])>) {
        let h = self.weight.len();
        for_rows(x, h, |first, rows| {
            for (r, row) in rows.chunks_exact_mut(h).enumerate() {
                if let Some((y, b)) = add {
                    let y = &y[(first + r) * h..][..h];
                    row.iter_mut().zip(y).zip(b).for_each(|((v, y), b)| *v += y + b);
                }
                let mean = row.iter().sum::<f32>() / h as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
                let inv = 1.0 / (var + self.eps).sqrt();
                for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                    *v = (*v - mean) * inv * w + b;
                }
            }
        });
    }

    fn add_and_apply(&self, y: &[f32], bias: &[f32], x: &mut [f32]) {
        self.apply(x, Some((y, bias)));
    }
}

/// Softmax of one row of attention scores, in place.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// GELU, `x · Φ(x)` with the exact (erf) form BERT uses.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf as a rational function of `x` clamped to ±4 (past which erf is ±1 in f32), with
/// the coefficients Eigen and XLA use (error near f32 rounding). No `exp` and no branch: a
/// loop of these vectorizes, where one through `expf` took tenths of a short text's time.
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_15e-5 - 2.133_740_5e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329_3e-3;
    q = x2 * q - 1.426_473_9e-2;
    x * p / q
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
        // On one of the encoder's threads: the parallel steps inside (and gemm's and the
        // tokenizer's) then run on that pool, and start without handing work over and
        // putting this thread to sleep, dozens of times a text.
        self.pool.install(|| self.forward(texts))
    }
}

/// The weights by name; BERT checkpoints sometimes prefix them with `bert.`.
struct Weights<'a> {
    dir: &'a Path,
    tensors: safetensors::SafeTensors<'a>,
}

impl Weights<'_> {
    /// The tensor `name` as f32, checked to have the `expected` shape (0: any length but 0).
    fn values(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let view = self
            .tensors
            .tensor(name)
            .or_else(|_| self.tensors.tensor(&format!("bert.{name}")))
            .map_err(|_| model_error(self.dir, format!("model.safetensors has no {name}")))?;
        let shape = view.shape();
        let fits = shape.len() == expected.len()
            && shape.iter().zip(expected).all(|(&s, &e)| if e == 0 { s > 0 } else { s == e });
        if !fits {
            return Err(model_error(self.dir, format!("{name} has shape {shape:?}, expected {expected:?}")));
        }
        let data = view.data();
        let values = match view.dtype() {
            safetensors::Dtype::F32 => {
                data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect(),
            safetensors::Dtype::F16 => {
                data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()
            }
            other => {
                return Err(model_error(self.dir, format!("{name} is {other:?}; f32, f16 and bf16 are supported")));
            }
        };
        Ok(values)
    }

    /// The dense layers `names` (`inputs → outputs` each) as one, their outputs side by side:
    /// one product instead of several over the same input.
    fn dense(&self, names: &[String], inputs: usize, outputs: usize) -> Result<Dense> {
        let (mut weight, mut bias) = (Vec::new(), Vec::new());
        for name in names {
            weight.extend(self.values(&format!("{name}.weight"), &[outputs, inputs])?);
            bias.extend(self.values(&format!("{name}.bias"), &[outputs])?);
        }
        Ok(Dense { weight: Packed::new(&weight, inputs, bias.len()), bias })
    }

    fn norm(&self, name: &str, width: usize, eps: f32) -> Result<Norm> {
        Ok(Norm {
            weight: self.values(&format!("{name}.weight"), &[width])?,
            bias: self.values(&format!("{name}.bias"), &[width])?,
            eps,
        })
    }
}

/// An IEEE half-precision value widened to f32 (exact: every f16 is an f32).
fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        // Subnormal: mantissa · 2^-24.
        (0, m) => {
            let value = m as f32 * 2f32.powi(-24);
            return if sign == 0 { value } else { -value };
        }
        (0x1f, m) => 0x7f80_0000 | (m << 13),
        (e, m) => ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(sign | magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_widen_exactly() {
        for (bits, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 2f32.powi(-24)),
            (0x8001, -(2f32.powi(-24))),
            (0x0000, 0.0),
            (0x7c00, f32::INFINITY),
        ] {
            assert_eq!(f16_to_f32(bits), want, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert!(f16_to_f32(0x8000).is_sign_negative());
    }

    #[test]
    fn softmax_and_gelu_agree_with_their_definitions() {
        let mut row = [1.0f32, 2.0, 3.0, -1000.0];
        softmax(&mut row);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| (v - 3.0).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (got, want) in row.iter().zip(e.iter().map(|v| v / sum)) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(row[3], 0.0);
        // GELU(x) = x Φ(x): Φ(1) = 0.841344746, Φ(-1) = 0.158655254.
        assert!((gelu(1.0) - 0.841_344_8).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
        // erf against tabulated values.
        for (x, want) in [
            (0.1f32, 0.112_462_916f64),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (2.0, 0.995_322_265),
            (-0.3, -0.328_626_759),
            (3.5, 0.999_999_257),
            (9.0, 1.0),
            (-9.0, -1.0),
        ] {
            assert!((f64::from(erf(x)) - want).abs() < 1e-6, "erf({x}) = {} vs {want}", erf(x));
        }
    }
}
