//! Fills a `Llama` from GGUF (llama.cpp names) or safetensors (Hugging Face names).

use super::config::LlamaConfig;
use super::lora::Projection;
use super::model::{Attention, Block, Llama, Mlp};
use super::rope::Rope;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::GgufFile;
use crate::weights::{TensorData32, WeightError, WeightSource, load, to_tensor};
use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm, RmsNormConfig};
use burn::prelude::*;

/// Tensor names in one checkpoint format.
struct Names {
    embed: &'static str,
    norm: &'static str,
    head: &'static str,
    layer: fn(usize, &str) -> String,
    /// GGUF stores Q/K rows permuted for adjacent-pair RoPE.
    permuted_qk: bool,
}

const GGUF: Names = Names {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    head: "output.weight",
    layer: |i, part| {
        let p = match part {
            "input_norm" => "attn_norm",
            "post_norm" => "ffn_norm",
            "q" => "attn_q",
            "k" => "attn_k",
            "v" => "attn_v",
            "o" => "attn_output",
            "gate" => "ffn_gate",
            "up" => "ffn_up",
            _ => "ffn_down",
        };
        format!("blk.{i}.{p}.weight")
    },
    permuted_qk: true,
};

const HF: Names = Names {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    head: "lm_head.weight",
    layer: |i, part| {
        let p = match part {
            "input_norm" => "input_layernorm",
            "post_norm" => "post_attention_layernorm",
            "q" => "self_attn.q_proj",
            "k" => "self_attn.k_proj",
            "v" => "self_attn.v_proj",
            "o" => "self_attn.o_proj",
            "gate" => "mlp.gate_proj",
            "up" => "mlp.up_proj",
            _ => "mlp.down_proj",
        };
        format!("model.layers.{i}.{p}.weight")
    },
    permuted_qk: false,
};

/// Loads SmolLM2 (or any Llama) from the bytes of a GGUF file.
pub fn llama_from_gguf(bytes: &[u8], device: &Device) -> Result<(LlamaConfig, Llama), WeightError> {
    let file = GgufFile::parse(bytes)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let model = build(&config, &file, &GGUF, device)?;
    Ok((config, model))
}

/// Loads the generator and its tokenizer from the bytes of one GGUF file, parsed once.
pub fn generator_from_gguf(
    bytes: &[u8],
    device: &Device,
) -> Result<(LlamaConfig, Llama, Tokenizer), WeightError> {
    let file = GgufFile::parse(bytes)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let model = build(&config, &file, &GGUF, device)?;
    Ok((config, model, tokenizer))
}

/// Loads a Llama from HF `config.json` text and `model.safetensors` bytes.
pub fn llama_from_safetensors(
    config_json: &str,
    bytes: &[u8],
    device: &Device,
) -> Result<(LlamaConfig, Llama), WeightError> {
    let config = LlamaConfig::from_hf_json(config_json)?;
    let file = crate::weights::safetensors::SafetensorsFile::parse(bytes)?;
    let model = build(&config, &file, &HF, device)?;
    Ok((config, model))
}

fn build(
    c: &LlamaConfig,
    src: &dyn WeightSource,
    names: &Names,
    device: &Device,
) -> Result<Llama, WeightError> {
    let hd = c.head_dim();
    let h = c.hidden_size;
    let norm = |name: &str| -> Result<RmsNorm, WeightError> {
        let mut n = RmsNormConfig::new(h)
            .with_epsilon(c.rms_norm_eps)
            .init(device);
        n.gamma = Param::from_tensor(load(src, name, [h], device)?);
        Ok(n)
    };
    // Linear weights are stored [out, in]; Burn multiplies by [in, out].
    let linear = |name: &str, out: usize, inp: usize, heads: Option<usize>| {
        let mut t = src.tensor(name)?;
        if t.shape != [out, inp] {
            return Err(WeightError::Shape {
                name: name.into(),
                found: t.shape,
                expected: vec![out, inp],
            });
        }
        if let Some(n_heads) = heads {
            t = unpermute_rope_rows(&t, n_heads);
        }
        to_tensor(name, t.transposed(), [inp, out], device)
    };
    let projection = |name: &str, out: usize, inp: usize, heads: Option<usize>| {
        linear(name, out, inp, heads).map(Projection::new)
    };
    let qk_heads = |n| names.permuted_qk.then_some(n);

    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let n = |part| (names.layer)(i, part);
        layers.push(Block {
            input_layernorm: norm(&n("input_norm"))?,
            self_attn: Attention {
                q_proj: projection(
                    &n("q"),
                    c.num_attention_heads * hd,
                    h,
                    qk_heads(c.num_attention_heads),
                )?,
                k_proj: projection(
                    &n("k"),
                    c.num_key_value_heads * hd,
                    h,
                    qk_heads(c.num_key_value_heads),
                )?,
                v_proj: projection(&n("v"), c.num_key_value_heads * hd, h, None)?,
                o_proj: projection(&n("o"), h, c.num_attention_heads * hd, None)?,
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: hd,
            },
            post_attention_layernorm: norm(&n("post_norm"))?,
            mlp: Mlp {
                gate_proj: projection(&n("gate"), c.intermediate_size, h, None)?,
                up_proj: projection(&n("up"), c.intermediate_size, h, None)?,
                down_proj: projection(&n("down"), h, c.intermediate_size, None)?,
            },
        });
    }
    let embed = load(src, names.embed, [c.vocab_size, h], device)?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(Linear {
            weight: Param::from_tensor(linear(names.head, c.vocab_size, h, None)?),
            bias: None,
        })
    };
    Ok(Llama {
        embed_tokens: Embedding {
            weight: Param::from_tensor(embed),
        },
        layers,
        norm: norm(names.norm)?,
        lm_head,
        rope: Rope::new(hd, c.rope_table_len(), c.rope_theta, device),
    })
}

/// Undoes llama.cpp's Q/K row permutation. Within each head, GGUF row 2i+j holds what
/// Hugging Face keeps at row j*d/2 + i (numpy: `w.reshape(n, d/2, 2, in).swapaxes(1, 2)`).
fn unpermute_rope_rows(t: &TensorData32, n_heads: usize) -> TensorData32 {
    let [rows, cols] = [t.shape[0], t.shape[1]];
    let d = rows / n_heads;
    let mut values = vec![0.0; t.values.len()];
    for h in 0..n_heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = (h * d + 2 * i + j) * cols;
                let dst = (h * d + j * d / 2 + i) * cols;
                values[dst..dst + cols].copy_from_slice(&t.values[src..src + cols]);
            }
        }
    }
    TensorData32 {
        shape: t.shape.clone(),
        values,
    }
}
