//! Fills a `ModernBert` from Hugging Face safetensors (a bare `ModernBertModel`, or the
//! `model.` prefix of `ModernBertForMaskedLM` and the other task heads).

use super::config::ModernBertConfig;
use super::model::{ModernBert, ModernBertLayer};
use crate::weights::safetensors::SafetensorsFile;
use crate::weights::{WeightError, WeightSource, linear, load};
use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;

/// Loads a ModernBERT from HF `config.json` text and `model.safetensors` bytes.
pub fn modernbert_from_safetensors(
    config_json: &str,
    bytes: &[u8],
    device: &Device,
) -> Result<(ModernBertConfig, ModernBert), WeightError> {
    let c = ModernBertConfig::from_hf_json(config_json)?;
    let src = SafetensorsFile::parse(bytes)?;
    let prefix = if src.contains("model.embeddings.tok_embeddings.weight") {
        "model."
    } else {
        ""
    };
    let h = c.hidden_size;
    let name = |n: &str| format!("{prefix}{n}");

    let norm = |n: &str| -> Result<LayerNorm, WeightError> {
        let mut norm = LayerNormConfig::new(h)
            .with_epsilon(c.norm_eps)
            .with_bias(c.norm_bias)
            .init(device);
        norm.gamma = Param::from_tensor(load(&src, &name(&format!("{n}.weight")), [h], device)?);
        if c.norm_bias {
            let bias = load(&src, &name(&format!("{n}.bias")), [h], device)?;
            norm.beta = Some(Param::from_tensor(bias));
        }
        Ok(norm)
    };
    let lin = |n: &str, out: usize, inp: usize, bias: bool| -> Result<Linear, WeightError> {
        linear(&src, &name(n), [out, inp], bias, device)
    };

    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = |n: &str| format!("layers.{i}.{n}");
        let i_size = c.intermediate_size;
        layers.push(ModernBertLayer {
            attn_norm: (i > 0).then(|| norm(&p("attn_norm"))).transpose()?,
            wqkv: lin(&p("attn.Wqkv"), 3 * h, h, c.attention_bias)?,
            wo: lin(&p("attn.Wo"), h, h, c.attention_bias)?,
            mlp_norm: norm(&p("mlp_norm"))?,
            wi: lin(&p("mlp.Wi"), 2 * i_size, h, c.mlp_bias)?,
            mlp_out: lin(&p("mlp.Wo"), h, i_size, c.mlp_bias)?,
            num_heads: c.num_attention_heads,
            half_window: c.half_window(i),
        });
    }
    let model = ModernBert {
        tok_embeddings: Embedding {
            weight: Param::from_tensor(load(
                &src,
                &name("embeddings.tok_embeddings.weight"),
                [c.vocab_size, h],
                device,
            )?),
        },
        embed_norm: norm("embeddings.norm")?,
        layers,
        final_norm: norm("final_norm")?,
        global_rope: c.rope(c.global_rope_theta, device),
        local_rope: c.rope(c.local_rope_theta, device),
    };
    Ok((c, model))
}
