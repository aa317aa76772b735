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

    /// This cache moved `pad` positions on, behind `pad` placeholders (zero keys and values,
    /// for the caller's mask to hide), as if its rows had been prefilled left-padded:
    /// `rotate` turns cached keys `[batch, kv_heads, seq, head_dim]` as `pad` positions do
    /// (RoPE rotations add up). Caches of different lengths so become [`KvCache::stack`]able.
    pub(crate) fn left_padded(self, pad: usize, rotate: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        if pad == 0 {
            return self;
        }
        let late = self.late.map(|l| LatePositions {
            layer: l.layer,
            rows: l
                .rows
                .into_iter()
                .map(|row| [vec![false; pad], row].concat())
                .collect(),
        });
        let layers = self
            .layers
            .into_iter()
            .map(|kv| {
                kv.map(|(k, v)| {
                    let [batch, heads, _, d] = k.dims();
                    let zeros = Tensor::<4>::zeros([batch, heads, pad, d], &k.device());
                    (
                        Tensor::cat(vec![zeros.clone(), rotate(k)], 2),
                        Tensor::cat(vec![zeros, v], 2),
                    )
                })
            })
            .collect();
        Self { layers, late }
    }

    /// Caches of the same length as one batch (their rows in order).
    pub fn stack(caches: Vec<KvCache>) -> Self {
        let len = caches.first().map_or(0, KvCache::len);
        assert!(
            caches.iter().all(|c| c.len() == len),
            "stacked caches hold the same number of positions"
        );
        let num_layers = caches.first().map_or(0, |c| c.layers.len());
        let late = caches.iter().find_map(|c| c.late.as_ref()).map(|first| {
            let layer = first.layer;
            let rows = caches
                .iter()
                .flat_map(|c| match &c.late {
                    Some(l) => {
                        assert_eq!(l.layer, layer, "late vectors enter after the same layer");
                        l.rows.clone()
                    }
                    None => vec![vec![false; len]; c.batch()],
                })
                .collect();
            LatePositions { layer, rows }
        });
        let mut per_layer: Vec<Vec<(Tensor<4>, Tensor<4>)>> = vec![Vec::new(); num_layers];
        for cache in caches {
            for (i, kv) in cache.layers.into_iter().enumerate() {
                per_layer[i].extend(kv);
            }
        }
        let layers = per_layer
            .into_iter()
            .map(|kvs| {
                if kvs.is_empty() {
                    return None;
                }
                let (k, v): (Vec<_>, Vec<_>) = kvs.into_iter().unzip();
                Some((Tensor::cat(k, 0), Tensor::cat(v, 0)))
            })
            .collect();
        Self { layers, late }
    }

    /// The cache of rows `keep` of this batch only (in that order).
    pub fn select_rows(self, keep: &[usize]) -> Self {
        let late = self.late.map(|l| LatePositions {
            layer: l.layer,
            rows: keep.iter().map(|&r| l.rows[r].clone()).collect(),
        });
        let Some(Some((first, _))) = self.layers.first() else {
            return Self { late, ..self };
        };
        let ids: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [keep.len()]), &first.device());
        let layers = self
            .layers
            .into_iter()
            .map(|kv| kv.map(|(k, v)| (k.select(0, ids.clone()), v.select(0, ids.clone()))))
            .collect();
        Self { layers, late }
    }

    /// Rows of the cached sequences (1 while nothing is cached).
    fn batch(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[0],
            _ => 1,
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
