//! Fills a `Bert` from Hugging Face safetensors (with or without the `bert.` prefix).

use super::config::BertConfig;
use super::model::{Bert, BertEmbeddings, BertLayer};
use crate::weights::safetensors::SafetensorsFile;
use crate::weights::{WeightError, WeightSource, linear, load};
use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;

/// Loads a BERT from HF `config.json` text and `model.safetensors` bytes.
pub fn bert_from_safetensors(
    config_json: &str,
    bytes: &[u8],
    device: &Device,
) -> Result<(BertConfig, Bert), WeightError> {
    let c = BertConfig::from_hf_json(config_json)?;
    let src = SafetensorsFile::parse(bytes)?;
    let prefix = if src.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let h = c.hidden_size;
    let name = |n: &str| format!("{prefix}{n}");

    let ln = |n: &str| -> Result<LayerNorm, WeightError> {
        let mut norm = LayerNormConfig::new(h)
            .with_epsilon(c.layer_norm_eps)
            .init(device);
        norm.gamma = Param::from_tensor(load(&src, &name(&format!("{n}.weight")), [h], device)?);
        norm.beta = Some(Param::from_tensor(load(
            &src,
            &name(&format!("{n}.bias")),
            [h],
            device,
        )?));
        Ok(norm)
    };
    let lin = |n: &str, out: usize, inp: usize| -> Result<Linear, WeightError> {
        linear(&src, &name(n), [out, inp], true, device)
    };
    let emb = |n: &str, rows: usize| -> Result<Embedding, WeightError> {
        Ok(Embedding {
            weight: Param::from_tensor(load(&src, &name(n), [rows, h], device)?),
        })
    };

    let embeddings = BertEmbeddings {
        word: emb("embeddings.word_embeddings.weight", c.vocab_size)?,
        position: emb(
            "embeddings.position_embeddings.weight",
            c.max_position_embeddings,
        )?,
        token_type: emb("embeddings.token_type_embeddings.weight", c.type_vocab_size)?,
        norm: ln("embeddings.LayerNorm")?,
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = |n: &str| format!("encoder.layer.{i}.{n}");
        layers.push(BertLayer {
            query: lin(&p("attention.self.query"), h, h)?,
            key: lin(&p("attention.self.key"), h, h)?,
            value: lin(&p("attention.self.value"), h, h)?,
            attn_out: lin(&p("attention.output.dense"), h, h)?,
            attn_norm: ln(&p("attention.output.LayerNorm"))?,
            intermediate: lin(&p("intermediate.dense"), c.intermediate_size, h)?,
            output: lin(&p("output.dense"), h, c.intermediate_size)?,
            out_norm: ln(&p("output.LayerNorm"))?,
            num_heads: c.num_attention_heads,
        });
    }
    Ok((c, Bert { embeddings, layers }))
}
