//! What a prompt feeds the generator: token embeddings, and vectors that enter its residual
//! stream at a later layer (the compressed documents' memory).

use burn::prelude::*;

/// Vectors that enter a prompt's residual stream after generator layer `layer` (0: at the
/// input), at the positions where `slots` is true: the compressor's pooled layer-k states,
/// which the generator's layer k + 1 reads as it reads its own layer-k stream.
#[derive(Debug, Clone)]
pub struct Inserted {
    pub layer: usize,
    /// `[batch, seq, hidden]`: the vectors at their positions, zero elsewhere.
    pub values: Tensor<3>,
    /// `batch × seq` flags, row-major: true at the inserted positions.
    pub slots: Vec<bool>,
}

impl Inserted {
    /// `[batch, seq, 1]`: 0 at the inserted positions, 1 elsewhere.
    pub(crate) fn keep(&self, batch: usize, seq: usize, device: &Device) -> Tensor<3> {
        let keep = self
            .slots
            .iter()
            .map(|&s| if s { 0.0 } else { 1.0 })
            .collect();
        Tensor::from_data(TensorData::new::<f32, _>(keep, [batch, seq, 1]), device)
    }
}

/// One prompt's input: token embeddings `[1, n, hidden]`, zero where `inserted` has vectors.
#[derive(Debug, Clone)]
pub struct PromptInput {
    pub embeds: Tensor<3>,
    pub inserted: Option<Inserted>,
}

impl PromptInput {
    /// A prompt of token embeddings only.
    pub fn tokens(embeds: Tensor<3>) -> Self {
        Self {
            embeds,
            inserted: None,
        }
    }

    pub fn len(&self) -> usize {
        self.embeds.dims()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prompts of up to `n` positions as one batch `[batch, n, hidden]`, each padded with
    /// zeros on the left (`left`) or on the right.
    pub fn stack(prompts: Vec<Self>, n: usize, left: bool) -> (Tensor<3>, Option<Inserted>) {
        let device = prompts[0].embeds.device();
        let d = prompts[0].embeds.dims()[2];
        let layer = prompts
            .iter()
            .find_map(|p| p.inserted.as_ref().map(|i| i.layer));
        let pad = |t: Tensor<3>| {
            let len = t.dims()[1];
            match n - len {
                0 => t,
                k => {
                    let zeros = Tensor::zeros([1, k, d], &device);
                    let parts = if left { vec![zeros, t] } else { vec![t, zeros] };
                    Tensor::cat(parts, 1)
                }
            }
        };
        let mut embeds = Vec::with_capacity(prompts.len());
        let mut values = Vec::with_capacity(prompts.len());
        let mut slots = Vec::with_capacity(prompts.len() * n);
        for p in prompts {
            let len = p.len();
            let (v, s) = match p.inserted {
                Some(ins) => {
                    assert_eq!(Some(ins.layer), layer, "one insertion layer per batch");
                    (ins.values, ins.slots)
                }
                None => (Tensor::zeros([1, len, d], &device), vec![false; len]),
            };
            let gap = std::iter::repeat_n(false, n - len);
            if left {
                slots.extend(gap);
                slots.extend(s);
            } else {
                slots.extend(s);
                slots.extend(gap);
            }
            embeds.push(pad(p.embeds));
            values.push(pad(v));
        }
        let inserted = layer.map(|layer| Inserted {
            layer,
            values: Tensor::cat(values, 0),
            slots,
        });
        (Tensor::cat(embeds, 0), inserted)
    }
}
