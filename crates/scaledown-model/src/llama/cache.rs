//! Key-value cache for incremental decoding.

use burn::prelude::*;

/// Keys and values of every layer for the positions seen so far.
/// Each entry: `[batch, kv_heads, seq, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Positions whose vectors entered the residual stream after a layer k > 0 (see
    /// [`super::model::Inserted`]): the layers below k hold placeholder keys there, which no
    /// later query of those layers may see.
    late: Option<LatePositions>,
}

#[derive(Debug, Clone)]
struct LatePositions {
    layer: usize,
    /// Per batch row, per cached position: whether it holds an inserted vector.
    rows: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            late: None,
        }
    }

    /// Number of cached positions (the position of the next token).
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys and values for `layer` and returns all of them.
    pub fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Records which of the next `seq` positions of each of `batch` rows hold vectors that
    /// enter after `layer` (`late`: `batch × seq` flags, row-major; None: no such position)
    /// and returns that layer with the mask the layers below it need,
    /// `[batch, 1, seq, past + seq]`, true at every late key but a query's own (so that no row
    /// of the placeholder queries is fully masked). Both are None while no position is late.
    pub(crate) fn late_mask(
        &mut self,
        batch: usize,
        seq: usize,
        late: Option<(usize, &[bool])>,
        device: &Device,
    ) -> Option<(usize, Tensor<4, Bool>)> {
        let past = self.len();
        if let Some((layer, flags)) = late
            && self.late.is_none()
            && flags.iter().any(|&f| f)
        {
            self.late = Some(LatePositions {
                layer,
                rows: vec![vec![false; past]; batch],
            });
        }
        let record = self.late.as_mut()?;
        if let Some((layer, _)) = late {
            assert_eq!(
                layer, record.layer,
                "all late vectors of a sequence enter after the same layer"
            );
        }
        assert_eq!(record.rows.len(), batch, "the cache's batch size is fixed");
        for (b, row) in record.rows.iter_mut().enumerate() {
            match late {
                Some((_, flags)) => row.extend_from_slice(&flags[b * seq..(b + 1) * seq]),
                None => row.extend(std::iter::repeat_n(false, seq)),
            }
        }
        let total = past + seq;
        let hidden: Vec<bool> = record
            .rows
            .iter()
            .flat_map(|row| {
                (0..seq).flat_map(move |q| (0..total).map(move |k| row[k] && k != past + q))
            })
            .collect();
        let mask =
            Tensor::<4, Bool>::from_data(TensorData::new(hidden, [batch, 1, seq, total]), device);
        Some((record.layer, mask))
    }
}
