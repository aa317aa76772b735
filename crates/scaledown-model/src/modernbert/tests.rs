use super::*;
use burn::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/modernbert_tiny"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURE}/{name}")).expect("fixture (see make.py beside it)")
}

/// The fixture's weights (`weights.json`: name -> shape and values) as safetensors bytes.
fn fixture_safetensors() -> Vec<u8> {
    let weights: BTreeMap<String, (Vec<usize>, Vec<u8>)> =
        serde_json::from_slice::<serde_json::Value>(&fixture("weights.json"))
            .expect("weights.json")
            .as_object()
            .expect("an object")
            .iter()
            .map(|(name, t)| {
                let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
                let values: Vec<f32> = serde_json::from_value(t["values"].clone()).unwrap();
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.clone(), (shape, bytes))
            })
            .collect();
    let views = weights.iter().map(|(name, (shape, bytes))| {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap();
        (name.clone(), view)
    });
    safetensors::serialize(views, None).unwrap()
}

fn int_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let (b, s) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}

/// Last hidden states equal transformers' `ModernBertModel` on random weights (global and
/// local layers, both RoPE thetas, a padded row); `make.py` wrote the fixture.
#[test]
fn matches_transformers() {
    let device = Device::flex();
    let config = String::from_utf8(fixture("config.json")).unwrap();
    let (c, model) = modernbert_from_safetensors(&config, &fixture_safetensors(), &device)
        .expect("load the fixture");
    assert_eq!(
        c.layers,
        [
            AttentionSpan::Global,
            AttentionSpan::Local,
            AttentionSpan::Local
        ]
    );
    let expected: serde_json::Value =
        serde_json::from_slice(&fixture("expected.json")).expect("expected.json");
    let rows =
        |key: &str| -> Vec<Vec<i64>> { serde_json::from_value(expected[key].clone()).unwrap() };
    let (ids, mask) = (rows("input_ids"), rows("attention_mask"));
    let out = model.forward(int_tensor(&ids, &device), int_tensor(&mask, &device));
    let [_, s, h] = out.dims();
    let got: Vec<f32> = out.into_data().try_into_vec::<f32>().unwrap();
    let want: Vec<Vec<Vec<f32>>> =
        serde_json::from_value(expected["last_hidden_state"].clone()).unwrap();
    let mut worst = 0.0f32;
    for (b, row) in want.iter().enumerate() {
        for (t, token) in row.iter().enumerate() {
            for (j, w) in token.iter().enumerate() {
                worst = worst.max((got[(b * s + t) * h + j] - w).abs());
            }
        }
    }
    assert!(worst < 1e-4, "largest difference {worst}");
}

/// A padded batch gives each row the states it has alone.
#[test]
fn padding_changes_nothing() {
    let device = Device::flex();
    let model = ModernBertConfig::tiny(40).init(&device);
    let alone = model.forward(
        int_tensor(&[vec![1, 5, 9, 2]], &device),
        int_tensor(&[vec![1, 1, 1, 1]], &device),
    );
    let batch = model.forward(
        int_tensor(&[vec![1, 5, 9, 2, 0, 0], vec![1, 7, 7, 7, 7, 2]], &device),
        int_tensor(&[vec![1, 1, 1, 1, 0, 0], vec![1; 6]], &device),
    );
    let a: Vec<f32> = alone.into_data().try_into_vec::<f32>().unwrap();
    let b: Vec<f32> = batch
        .slice([0..1, 0..4])
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

/// With local layers only, a token's state depends on the tokens within layers x half-window
/// positions and on no others.
#[test]
fn local_layers_see_only_their_window() {
    let device = Device::flex();
    let mut config = ModernBertConfig::tiny(40);
    config.layers = vec![AttentionSpan::Local; 3]; // half window 2: reach 6
    let model = config.init(&device);
    let states = |first: i64| -> Vec<f32> {
        let ids: Vec<i64> = std::iter::once(first).chain(1..12).collect();
        let out = model.forward(
            int_tensor(&[ids], &device),
            int_tensor(&[vec![1; 12]], &device),
        );
        out.into_data().try_into_vec::<f32>().unwrap()
    };
    let (a, b) = (states(30), states(31));
    let h = 32;
    let moved = |t: usize| {
        a[t * h..(t + 1) * h]
            .iter()
            .zip(&b[t * h..(t + 1) * h])
            .any(|(x, y)| (x - y).abs() > 1e-6)
    };
    assert!(moved(6), "position 6 is within reach of position 0");
    assert!(!moved(7), "position 7 is out of reach of position 0");
}

#[test]
fn config_reads_the_published_spelling() {
    let json = r#"{"model_type": "modernbert", "vocab_size": 50368, "hidden_size": 768,
        "num_hidden_layers": 22, "num_attention_heads": 12, "intermediate_size": 1152,
        "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0, "local_attention": 128, "norm_eps": 1e-05,
        "norm_bias": false, "hidden_activation": "gelu"}"#;
    let c = ModernBertConfig::from_hf_json(json).unwrap();
    assert_eq!(c.layers.len(), 22);
    let global: Vec<usize> = (0..22)
        .filter(|&i| c.layers[i] == AttentionSpan::Global)
        .collect();
    assert_eq!(global, [0, 3, 6, 9, 12, 15, 18, 21]);
    assert_eq!((c.half_window(1), c.half_window(3)), (64, 0));
    assert_eq!(
        (c.global_rope_theta, c.local_rope_theta),
        (160_000.0, 10_000.0)
    );
}

#[test]
fn config_refuses_what_it_cannot_run() {
    let base = r#""vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16"#;
    for (extra, needle) in [
        (r#""hidden_activation": "silu""#, "silu"),
        (r#""model_type": "bert""#, "bert"),
        (
            r#""layer_types": ["full_attention", "full_attention"]"#,
            "2 entries",
        ),
        (
            r#""rope_parameters": {"full_attention": {"rope_type": "yarn"}}"#,
            "yarn",
        ),
        (r#""local_attention": 1"#, "local attention"),
    ] {
        let json = format!("{{{base}, {extra}}}");
        let err = ModernBertConfig::from_hf_json(&json)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{extra}: {err}");
    }
}
