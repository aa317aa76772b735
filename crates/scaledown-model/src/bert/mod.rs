//! BERT encoder (all-MiniLM-L6-v2): config, model with mean pooling, weight loading, and
//! question-document relevance (the reranking teacher).

pub mod config;
pub mod load;
pub mod model;
pub mod relevance;

pub use config::BertConfig;
pub use load::bert_from_safetensors;
pub use model::Bert;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::*;

    /// A padded batch gives each text the embedding it has alone: the mask hides padding
    /// from attention and from the mean.
    #[test]
    fn padding_changes_nothing() {
        let device = Device::flex();
        let bert = BertConfig::tiny(40).init(&device);
        let alone = bert.sentence_embedding(&[1, 5, 9, 2], &device);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 9, 2, 0, 0, 1, 7, 7, 7, 7, 2], [2, 6]),
            &device,
        );
        let mask = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], [2, 6]),
            &device,
        );
        let batch = Bert::pool(bert.forward(ids, mask.clone()), mask);
        let a: Vec<f32> = alone.into_data().try_into_vec::<f32>().unwrap();
        let b: Vec<f32> = batch
            .slice([0..1, 0..32])
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embedding is L2-normalised");
    }

    #[test]
    fn config_refuses_unknown_activation() {
        let json = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 8,
            "hidden_act": "relu"}"#;
        assert!(
            BertConfig::from_hf_json(json)
                .unwrap_err()
                .to_string()
                .contains("relu")
        );
    }
}
