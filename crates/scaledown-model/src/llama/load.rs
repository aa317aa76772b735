//! Fills a `Llama` from GGUF (llama.cpp names) or safetensors (Hugging Face names).

use super::config::LlamaConfig;
use super::model::Llama;
use crate::quant::BlockMatrix;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::GgufFile;
use crate::weights::{TensorData32, WeightError, WeightSource, load, to_tensor};
use burn::module::Param;
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
    let model = build(&config, &file, &GGUF, device, false)?;
    Ok((config, model))
}

/// Loads the generator and its tokenizer from the bytes of one GGUF file, parsed once.
pub fn generator_from_gguf(
    bytes: &[u8],
    device: &Device,
) -> Result<(LlamaConfig, Llama, Tokenizer), WeightError> {
    generator_from_gguf_as(bytes, device, false)
}

/// [`generator_from_gguf`] for answering only: the model held in 4- and 8-bit blocks
/// ([`Llama::in_blocks`]), each layer turned into blocks as soon as it is read, so that the
/// f32 weights are never all in memory at once. Elsewhere than on the native CPU: the f32
/// model.
pub fn generator_from_gguf_in_blocks(
    bytes: &[u8],
    device: &Device,
) -> Result<(LlamaConfig, Llama, Tokenizer), WeightError> {
    generator_from_gguf_as(bytes, device, true)
}

fn generator_from_gguf_as(
    bytes: &[u8],
    device: &Device,
    in_blocks: bool,
) -> Result<(LlamaConfig, Llama, Tokenizer), WeightError> {
    let file = GgufFile::parse(bytes)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let model = build(&config, &file, &GGUF, device, in_blocks)?;
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
    let model = build(&config, &file, &HF, device, false)?;
    Ok((config, model))
}

/// The tree of [`LlamaConfig::init`], its weights replaced by `src`'s (by name, shapes checked);
/// `in_blocks`: as [`Llama::in_blocks`], layer by layer.
fn build(
    c: &LlamaConfig,
    src: &dyn WeightSource,
    names: &Names,
    device: &Device,
    in_blocks: bool,
) -> Result<Llama, WeightError> {
    let in_blocks = in_blocks && crate::backend::is_native_cpu(device);
    let hd = c.head_dim();
    let h = c.hidden_size;
    let gamma = |name: &str| -> Result<Param<Tensor<1>>, WeightError> {
        Ok(Param::from_tensor(load(src, name, [h], device)?))
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
        to_tensor(name, t.transposed(), [inp, out], device).map(Param::from_tensor)
    };
    let qk_heads = |n| names.permuted_qk.then_some(n);
    let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);

    let mut model = c.init(device);
    let tied = model.lm_head.is_none();
    // In blocks: the output head first, straight from the file's values. It is the largest
    // tensor (49152 x 576 for SmolLM2), and its f32 copy is gone before the layers' blocks
    // exist.
    if in_blocks {
        let name = if tied { names.embed } else { names.head };
        let t = src.tensor(name)?;
        if t.shape != [c.vocab_size, h] {
            return Err(WeightError::Shape {
                name: name.into(),
                found: t.shape,
                expected: vec![c.vocab_size, h],
            });
        }
        model.decode_head = BlockMatrix::from_out_in(&t.values, c.vocab_size, h);
    }
    let mut layers = Vec::with_capacity(model.layers.len());
    for (i, mut block) in std::mem::take(&mut model.layers).into_iter().enumerate() {
        let n = |part| (names.layer)(i, part);
        block.input_layernorm.gamma = gamma(&n("input_norm"))?;
        block.post_attention_layernorm.gamma = gamma(&n("post_norm"))?;
        let attn = &mut block.self_attn;
        attn.q_proj.weight = linear(&n("q"), q_out, h, qk_heads(c.num_attention_heads))?;
        attn.k_proj.weight = linear(&n("k"), kv_out, h, qk_heads(c.num_key_value_heads))?;
        attn.v_proj.weight = linear(&n("v"), kv_out, h, None)?;
        attn.o_proj.weight = linear(&n("o"), h, q_out, None)?;
        let mlp = &mut block.mlp;
        mlp.gate_proj.weight = linear(&n("gate"), c.intermediate_size, h, None)?;
        mlp.up_proj.weight = linear(&n("up"), c.intermediate_size, h, None)?;
        mlp.down_proj.weight = linear(&n("down"), h, c.intermediate_size, None)?;
        layers.push(if in_blocks { block.in_blocks() } else { block });
    }
    model.layers = layers;
    let head_held = model.decode_head.is_some();
    if !(tied && head_held) {
        model.embed_tokens.weight =
            Param::from_tensor(load(src, names.embed, [c.vocab_size, h], device)?);
    }
    if let Some(head) = &mut model.lm_head
        && !head_held
    {
        head.weight = linear(names.head, c.vocab_size, h, None)?;
    }
    model.norm.gamma = gamma(names.norm)?;
    if head_held {
        // The stand-ins for what the blocks hold (the lazy random weights are never drawn).
        model = model.without_dense(device);
    }
    Ok(model)
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
