//! Weights in 8-bit blocks for decoding on the CPU.
//!
//! A decoding step multiplies one hidden vector per sequence by every weight matrix: it reads
//! all 540 MB of SmolLM2's f32 weights per token and is bound by memory, not arithmetic. Kept
//! in blocks of 32 bytes with an f32 scale and minimum each (1.25 bytes per weight), the same
//! product reads 3.2x less. The grid `min + scale·k`, k = 0..255, holds GGUF's Q4_1 values
//! (`m + d·j`, j = 0..15) exactly when a block spans all 16 levels (255 = 15·17), so the
//! generator decodes from the weights it was given. Prefill and training keep f32: their
//! products are compute-bound, where Burn's GEMM beats any dequantizing kernel.

use std::sync::Arc;

/// Weights per block (one scale and one minimum each), as GGUF's.
pub const BLOCK: usize = 32;

/// Outputs whose blocks lie side by side: a product reads one stream per group of rows,
/// which the hardware prefetcher follows (one stream per row ran at half the bandwidth).
const GROUP: usize = 4;

/// A matrix `[outputs, inputs]` in 8-bit blocks, stored by groups of [`GROUP`] outputs:
/// block `b` of the group's rows side by side, then block `b + 1`, ...
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    inputs: usize,
    outputs: usize,
    /// `[groups, inputs / BLOCK, GROUP]`: (largest − smallest) / 255 of each block.
    scales: Vec<f32>,
    /// `[groups, inputs / BLOCK, GROUP]`: each block's smallest value.
    mins: Vec<f32>,
    /// `[groups, inputs / BLOCK, GROUP, BLOCK]`: round((w − min) / scale); rows past
    /// `outputs` are 0 with scale and minimum 0.
    quants: Vec<u8>,
}

impl Q8Matrix {
    /// Quantizes a row-major `[inputs, outputs]` weight (the `x·W` layout of a projection).
    /// None when `inputs` is not a multiple of [`BLOCK`].
    pub fn from_in_out(w: &[f32], inputs: usize, outputs: usize) -> Option<Arc<Self>> {
        Self::stacked(&[(w, outputs)], inputs)
    }

    /// Several `[inputs, outputs_k]` weights of the same input as one matrix whose outputs
    /// are theirs in turn: one product instead of several (a decoding step's q, k and v).
    /// None when `inputs` is not a multiple of [`BLOCK`] or a weight is not `[inputs, _]`.
    pub fn stacked(parts: &[(&[f32], usize)], inputs: usize) -> Option<Arc<Self>> {
        if parts.iter().any(|(w, outputs)| w.len() != inputs * outputs) {
            return None;
        }
        let total: usize = parts.iter().map(|(_, outputs)| outputs).sum();
        let mut rows = vec![0f32; total * inputs];
        let mut first = 0;
        for (w, outputs) in parts {
            for (i, row) in w.chunks_exact(*outputs).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    rows[(first + o) * inputs + i] = v;
                }
            }
            first += outputs;
        }
        Self::from_out_in(&rows, total, inputs)
    }

    /// Quantizes a row-major `[outputs, inputs]` weight (an embedding table read as the tied
    /// output head). None when `inputs` is not a multiple of [`BLOCK`].
    pub fn from_out_in(w: &[f32], outputs: usize, inputs: usize) -> Option<Arc<Self>> {
        if inputs == 0 || !inputs.is_multiple_of(BLOCK) || w.len() != inputs * outputs {
            return None;
        }
        let blocks = inputs / BLOCK;
        let groups = outputs.div_ceil(GROUP);
        let mut scales = Vec::with_capacity(groups * blocks * GROUP);
        let mut mins = Vec::with_capacity(groups * blocks * GROUP);
        let mut quants = Vec::with_capacity(groups * GROUP * inputs);
        for g in 0..groups {
            for b in 0..blocks {
                for o in g * GROUP..(g + 1) * GROUP {
                    let (scale, min, q) = match o < outputs {
                        true => quantize_block(&w[o * inputs + b * BLOCK..][..BLOCK]),
                        false => (0.0, 0.0, [0; BLOCK]),
                    };
                    scales.push(scale);
                    mins.push(min);
                    quants.extend_from_slice(&q);
                }
            }
        }
        Some(Arc::new(Self {
            inputs,
            outputs,
            scales,
            mins,
            quants,
        }))
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `x` `[rows, inputs]` -> `[rows, outputs]`, row-major, in f32: the weights are widened
    /// as they are read, so their rounding is the only difference from the f32 product.
    pub fn matvec(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            rows * self.inputs,
            "Q8Matrix::matvec: x is not [rows, inputs]"
        );
        let blocks = self.inputs / BLOCK;
        // Σ w·x = scale·Σ k·x + min·Σ x per block: Σ x once per row of x, for every output.
        let x_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        // Groups in chunks across threads; each group writes `[GROUP, rows]` of `out_t`.
        const CHUNK: usize = 16;
        let groups = self.outputs.div_ceil(GROUP);
        let mut out_t = vec![0f32; groups * GROUP * rows];
        let dot = dot_fn();
        let work = |(c, out): (usize, &mut [f32])| {
            for (k, out) in out.chunks_exact_mut(GROUP * rows).enumerate() {
                let g = c * CHUNK + k;
                let w = Group {
                    scales: &self.scales[g * blocks * GROUP..][..blocks * GROUP],
                    mins: &self.mins[g * blocks * GROUP..][..blocks * GROUP],
                    quants: &self.quants[g * self.inputs * GROUP..][..self.inputs * GROUP],
                };
                for r in 0..rows {
                    let x = Row {
                        values: &x[r * self.inputs..][..self.inputs],
                        sums: &x_sums[r * blocks..][..blocks],
                    };
                    for (i, y) in dot(w, x).into_iter().enumerate() {
                        out[i * rows + r] = y;
                    }
                }
            }
        };
        // Small matrices are not worth a thread hand-off (tens of microseconds to wake one).
        let parallel = self.outputs * self.inputs * rows >= 1 << 17;
        for_each_chunk(&mut out_t, CHUNK * GROUP * rows, parallel, work);
        out_t.truncate(self.outputs * rows);
        if rows == 1 {
            return out_t;
        }
        let mut out = vec![0f32; rows * self.outputs];
        for (o, ys) in out_t.chunks_exact(rows).enumerate() {
            for (r, &y) in ys.iter().enumerate() {
                out[r * self.outputs + o] = y;
            }
        }
        out
    }
}

/// One block's scale, minimum and values: `v ≈ min + scale·k`.
fn quantize_block(block: &[f32]) -> (f32, f32, [u8; BLOCK]) {
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scale = (max - min) / 255.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut quants = [0u8; BLOCK];
    for (q, v) in quants.iter_mut().zip(block) {
        *q = ((v - min) * inv).round().clamp(0.0, 255.0) as u8;
    }
    (scale, min, quants)
}

/// Runs `work` on each `chunk`-long piece of `out` (with its index), spread over the cores
/// when `parallel`. The calling thread takes the first share itself and hands the others to
/// rayon's pool: one wake-up per helper, instead of parking the caller until the pool is
/// done (a decoding step makes ~200 of these calls, each of tens of microseconds).
#[cfg(not(target_arch = "wasm32"))]
fn for_each_chunk(
    out: &mut [f32],
    chunk: usize,
    parallel: bool,
    work: impl Fn((usize, &mut [f32])) + Sync + Send,
) {
    let chunks = out.len().div_ceil(chunk);
    let shares = match parallel {
        true => rayon::current_num_threads().clamp(1, chunks.max(1)),
        false => 1,
    };
    let per_share = chunks.div_ceil(shares);
    let work = &work;
    let run = |first: usize, piece: &mut [f32]| {
        for (i, c) in piece.chunks_mut(chunk).enumerate() {
            work((first + i, c));
        }
    };
    if shares == 1 {
        return run(0, out);
    }
    let run = &run;
    rayon::in_place_scope(|scope| {
        let mut pieces = out.chunks_mut(per_share * chunk).enumerate();
        let first = pieces.next();
        for (k, piece) in pieces {
            scope.spawn(move |_| run(k * per_share, piece));
        }
        if let Some((_, piece)) = first {
            run(0, piece);
        }
    });
}

#[cfg(target_arch = "wasm32")]
fn for_each_chunk(out: &mut [f32], chunk: usize, _: bool, work: impl Fn((usize, &mut [f32]))) {
    out.chunks_mut(chunk).enumerate().for_each(work);
}

/// One group of weight rows: `[blocks, GROUP]` scales and minimums, `[blocks, GROUP, BLOCK]`
/// values.
#[derive(Clone, Copy)]
struct Group<'a> {
    scales: &'a [f32],
    mins: &'a [f32],
    quants: &'a [u8],
}

/// One row of x and the sums of its blocks.
#[derive(Clone, Copy)]
struct Row<'a> {
    values: &'a [f32],
    sums: &'a [f32],
}

/// A group of weight rows against one row of x: the group's [`GROUP`] dot products.
type DotFn = fn(Group, Row) -> [f32; GROUP];

/// How far ahead of the current block the AVX2 kernel prefetches, in bytes.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 1024;

/// The fastest dot product this CPU runs, chosen once.
fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DOT: OnceLock<DotFn> = OnceLock::new();
        *DOT.get_or_init(|| {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                |w, x| unsafe { dot_group_avx2(w, x) }
            } else {
                dot_group_scalar
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        dot_group_scalar
    }
}

/// For each row i of the group: Σ_b (scale_b · Σ k·x + min_b · Σ x) over the blocks.
fn dot_group_scalar(w: Group, x: Row) -> [f32; GROUP] {
    let mut sums = [0f32; GROUP];
    for (b, xb) in x.values.chunks_exact(BLOCK).enumerate() {
        for (i, sum) in sums.iter_mut().enumerate() {
            let at = b * GROUP + i;
            let q = &w.quants[at * BLOCK..][..BLOCK];
            let dot: f32 = q.iter().zip(xb).map(|(&q, &x)| q as f32 * x).sum();
            *sum += w.scales[at] * dot + w.mins[at] * x.sums[b];
        }
    }
    sums
}

/// [`dot_group_scalar`] in AVX2: x's block in four 8-lane vectors, shared by the group's
/// rows; each row's 32 bytes widened to f32 and multiplied in, then scaled once per block.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_group_avx2(w: Group, x: Row) -> [f32; GROUP] {
    use std::arch::x86_64::*;
    let blocks = x.sums.len();
    assert!(x.values.len() == blocks * BLOCK);
    assert!(w.scales.len() == blocks * GROUP && w.mins.len() == blocks * GROUP);
    assert!(w.quants.len() == blocks * GROUP * BLOCK);
    let mut acc = [_mm256_setzero_ps(); GROUP];
    let mut offsets = [0f32; GROUP];
    for b in 0..blocks {
        let at = b * GROUP * BLOCK;
        // The group's blocks are one stream: two cache lines per block, fetched ahead.
        let ahead = w.quants.as_ptr().wrapping_add(at + PREFETCH);
        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
        // SAFETY: block b of x and the group's blocks b lie inside the slices (asserted).
        let xv = [0, 1, 2, 3]
            .map(|k| unsafe { _mm256_loadu_ps(x.values.as_ptr().add(b * BLOCK + 8 * k)) });
        for (i, acc) in acc.iter_mut().enumerate() {
            let mut dot = _mm256_setzero_ps();
            for (k, xv) in xv.iter().enumerate() {
                // SAFETY: as above.
                let q8 = unsafe {
                    _mm_loadl_epi64(w.quants.as_ptr().add(at + i * BLOCK + 8 * k) as *const __m128i)
                };
                dot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q8)), *xv, dot);
            }
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.scales[b * GROUP + i]), dot, *acc);
            offsets[i] += w.mins[b * GROUP + i] * x.sums[b];
        }
    }
    let mut out = [0f32; GROUP];
    for ((out, v), offset) in out.iter_mut().zip(acc).zip(offsets) {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        *out = _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad))) + offset;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The f32 product `x·W` of a row-major `[inputs, outputs]` W.
    fn reference(x: &[f32], w: &[f32], rows: usize, inputs: usize, outputs: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * outputs];
        for r in 0..rows {
            for i in 0..inputs {
                for o in 0..outputs {
                    y[r * outputs + o] += x[r * inputs + i] * w[i * outputs + o];
                }
            }
        }
        y
    }

    #[test]
    fn the_product_equals_f32_within_the_rounding_of_8_bits() {
        // 201 outputs: the last group of four has one real row.
        let (inputs, outputs) = (96, 201);
        let w = lcg(1, inputs * outputs);
        let q = Q8Matrix::from_in_out(&w, inputs, outputs).unwrap();
        for rows in [1, 3] {
            let x = lcg(2 + rows as u64, rows * inputs);
            let got = q.matvec(&x, rows);
            let want = reference(&x, &w, rows, inputs, outputs);
            assert_eq!(got.len(), want.len());
            // Each weight is off by at most 1/510 of its block's range (2 here), unbiased.
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
            let diff: Vec<f32> = got.iter().zip(&want).map(|(a, b)| a - b).collect();
            let relative = norm(&diff) / norm(&want);
            assert!(relative < 0.005, "rows {rows}: relative error {relative}");
            let worst = diff.iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(
                worst > 0.0,
                "8-bit weights should not be exact on random values"
            );
        }
    }

    #[test]
    fn simd_and_scalar_dot_products_agree() {
        let (inputs, outputs) = (256, 70);
        let q = Q8Matrix::from_in_out(&lcg(5, inputs * outputs), inputs, outputs).unwrap();
        let values = lcg(6, inputs);
        let sums: Vec<f32> = values.chunks(BLOCK).map(|b| b.iter().sum()).collect();
        let x = Row {
            values: &values,
            sums: &sums,
        };
        let blocks = inputs / BLOCK;
        for g in 0..outputs.div_ceil(GROUP) {
            let w = Group {
                scales: &q.scales[g * blocks * GROUP..][..blocks * GROUP],
                mins: &q.mins[g * blocks * GROUP..][..blocks * GROUP],
                quants: &q.quants[g * inputs * GROUP..][..inputs * GROUP],
            };
            let (a, b) = (dot_group_scalar(w, x), dot_fn()(w, x));
            for (a, b) in a.iter().zip(b) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                    "group {g}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn q4_1_values_are_held_exactly_and_constant_blocks_too() {
        // A block spanning GGUF Q4_1's 16 levels m + d·j lands on the 8-bit grid (j·17); a
        // block of one repeated value has scale 0 and is its minimum.
        let (inputs, outputs) = (64, 2);
        let (m, d) = (-0.3f32, 0.04f32);
        let mut w = vec![0.7f32; inputs * outputs];
        for i in 0..32 {
            w[i * outputs] = m + d * (i % 16) as f32;
        }
        let q = Q8Matrix::from_in_out(&w, inputs, outputs).unwrap();
        let x = lcg(9, inputs);
        let got = q.matvec(&x, 1);
        let want = reference(&x, &w, 1, inputs, outputs);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }

    #[test]
    fn shapes_that_do_not_fill_blocks_are_refused() {
        assert!(Q8Matrix::from_in_out(&[0.0; 40], 20, 2).is_none());
        assert!(Q8Matrix::from_in_out(&[0.0; 10], 32, 2).is_none());
    }
}
