//! Weights in 4- or 8-bit blocks for decoding on the CPU.
//!
//! A decoding step multiplies one hidden vector per sequence by every weight matrix: it reads
//! all 540 MB of SmolLM2's f32 weights per token and is bound by memory, not arithmetic. Kept
//! in blocks of 32 values with an f16 scale and minimum each (as GGUF's Q4_1), the same
//! product reads 3.6x less at 8 bits (1.125 bytes per weight) and 6.4x less at 4 bits
//! (0.625). A matrix whose every block lies on a 4-bit grid `min + scale·k`, k = 0..15 (the
//! frozen generator of a GGUF Q4_1 file: exactly its values, its f16 `d` and `m` included) is
//! kept at 4 bits; any other (a merged LoRA, f16 weights) at 8, whose grid (k = 0..255) holds
//! Q4_1's 16 levels (255 = 15·17) within 1 % of their step (the f16 rounding of d/17). A
//! matrix with a block that f16 parameters cannot describe within a step (far out of f16's
//! range) is not kept in blocks at all.

use std::sync::Arc;

/// Weights per block (one scale and one minimum each), as GGUF's.
pub const BLOCK: usize = 32;

/// Outputs whose blocks lie side by side: a product reads one stream per group of rows,
/// which the hardware prefetcher follows (one stream per row ran at half the bandwidth).
const GROUP: usize = 4;

/// A matrix `[outputs, inputs]` in 4- or 8-bit blocks, stored by groups of [`GROUP`]
/// outputs: block `b` of the group's rows side by side, then block `b + 1`, ...
#[derive(Debug, Clone)]
pub struct BlockMatrix {
    inputs: usize,
    outputs: usize,
    /// 4 or 8.
    bits: u32,
    /// `[groups, inputs / BLOCK, GROUP]`: (largest − smallest) / (2^bits − 1) of each block,
    /// as f16 bits (they were a third of a 4-bit matrix's bytes in f32).
    scales: Vec<u16>,
    /// `[groups, inputs / BLOCK, GROUP]`: each block's smallest value, as f16 bits.
    mins: Vec<u16>,
    /// `[groups, inputs / BLOCK, GROUP, BLOCK · bits / 8]`: k = round((w − min) / scale); at
    /// 4 bits byte j holds k_j (low half) and k_{j+16} (high half). Rows past `outputs` are 0
    /// with scale and minimum 0.
    quants: Vec<u8>,
}

impl BlockMatrix {
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
    /// output head): at 4 bits if that holds every value, else at 8. None when `inputs` is
    /// not a multiple of [`BLOCK`] or a block does not fit f16 parameters.
    pub fn from_out_in(w: &[f32], outputs: usize, inputs: usize) -> Option<Arc<Self>> {
        if inputs == 0 || !inputs.is_multiple_of(BLOCK) || w.len() != inputs * outputs {
            return None;
        }
        let exact_at_4 = w
            .chunks_exact(BLOCK)
            .all(|b| quantize_block(b, 4).is_some());
        let bits = if exact_at_4 { 4 } else { 8 };
        let blocks = inputs / BLOCK;
        let groups = outputs.div_ceil(GROUP);
        let bytes = BLOCK * bits as usize / 8;
        let mut scales = Vec::with_capacity(groups * blocks * GROUP);
        let mut mins = Vec::with_capacity(groups * blocks * GROUP);
        let mut quants = Vec::with_capacity(groups * blocks * GROUP * bytes);
        for g in 0..groups {
            for b in 0..blocks {
                for o in g * GROUP..(g + 1) * GROUP {
                    let block = match o < outputs {
                        true => &w[o * inputs + b * BLOCK..][..BLOCK],
                        false => &[0.0; BLOCK][..],
                    };
                    let q = quantize_block(block, bits)?;
                    scales.push(q.scale);
                    mins.push(q.min);
                    quants.extend_from_slice(&q.bytes[..bytes]);
                }
            }
        }
        Some(Arc::new(Self {
            inputs,
            outputs,
            bits,
            scales,
            mins,
            quants,
        }))
    }

    /// 4 or 8.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `x` `[rows, inputs]` -> `[rows, outputs]`, row-major, in f32: the weights are widened
    /// as they are read, so their rounding (none for a Q4_1 file's) is the only difference
    /// from the f32 product.
    pub fn matvec(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            rows * self.inputs,
            "BlockMatrix::matvec: x is not [rows, inputs]"
        );
        let blocks = self.inputs / BLOCK;
        // Σ w·x = scale·Σ k·x + min·Σ x per block: Σ x once per row of x, for every output.
        let x_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        // Groups in chunks across threads; each group writes `[GROUP, rows]` of `out_t`.
        const CHUNK: usize = 16;
        let groups = self.outputs.div_ceil(GROUP);
        let mut out_t = vec![0f32; groups * GROUP * rows];
        let dot = dot_fn(self.bits);
        let work = |(c, out): (usize, &mut [f32])| {
            for (k, out) in out.chunks_exact_mut(GROUP * rows).enumerate() {
                let w = self.group(c * CHUNK + k);
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

impl BlockMatrix {
    /// `x` `[rows, inputs]` -> `[rows, outputs]` for any number of rows: a few rows (a
    /// decoding step) through [`BlockMatrix::matvec`], which reads each weight once; more (a
    /// prompt) through the f32 GEMM, a panel of dequantized outputs at a time, so that no
    /// f32 copy of the whole matrix is ever kept (a model held only in blocks).
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        if rows <= MATVEC_ROWS {
            return self.matvec(x, rows);
        }
        assert_eq!(
            x.len(),
            rows * self.inputs,
            "BlockMatrix::matmul: x is not [rows, inputs]"
        );
        let mut y = vec![0f32; rows * self.outputs];
        // Panels of about 1 MB of f32 (a core's L2), as many as a multiple of the threads, each
        // dequantized and multiplied by one thread: the panel is read back from the cache, not
        // from memory, and the threads meet once per product, not once per panel. (Whole-matrix
        // panels with the GEMM's own threads wrote 540 MB of f32 per prompt: 115 against the
        // f32 model's 77 ms at 32 tokens.)
        let all = self.outputs.div_ceil(GROUP);
        let threads = parallel_threads();
        let panels = (all * GROUP * self.inputs)
            .div_ceil(1 << 18)
            .next_multiple_of(threads)
            .min(all);
        let groups = all.div_ceil(panels);
        let out = SharedOut(y.as_mut_ptr());
        let dequantize = dequantize_fn(self.bits);
        let panel = |p: usize| {
            let first = p * groups;
            if first >= all {
                return;
            }
            let g = groups.min(all - first);
            // Taken out and put back, so that a nested call (a pool thread that picks up
            // another product while it waits) gets a fresh one instead of a borrow error.
            let mut scratch = SCRATCH.take();
            scratch.resize(g * GROUP * self.inputs, 0.0);
            for (k, rows) in scratch.chunks_exact_mut(GROUP * self.inputs).enumerate() {
                dequantize(self.group(first + k), rows);
            }
            let (o0, n) = (first * GROUP, (g * GROUP).min(self.outputs - first * GROUP));
            // SAFETY: y is [rows, outputs]; this panel alone writes its columns o0..o0 + n.
            unsafe {
                gemm_panel(
                    x,
                    rows,
                    self.inputs,
                    &scratch,
                    n,
                    out.at(0),
                    o0,
                    self.outputs,
                )
            };
            SCRATCH.set(scratch);
        };
        for_each_index(panels, panel);
        y
    }

    /// Rows `ids` of the matrix (outputs; the tokens' embeddings when it is the tied head)
    /// as `[ids.len(), inputs]` f32.
    pub fn rows(&self, ids: &[usize]) -> Vec<f32> {
        let mut group = vec![0f32; GROUP * self.inputs];
        let mut out = Vec::with_capacity(ids.len() * self.inputs);
        let dequantize = dequantize_fn(self.bits);
        for &o in ids {
            assert!(
                o < self.outputs,
                "BlockMatrix::rows: row {o} of {}",
                self.outputs
            );
            dequantize(self.group(o / GROUP), &mut group);
            out.extend_from_slice(&group[(o % GROUP) * self.inputs..][..self.inputs]);
        }
        out
    }

    /// Group `g`'s scales, minimums and values.
    fn group(&self, g: usize) -> Group<'_> {
        let blocks = self.inputs / BLOCK;
        let bytes = self.inputs * GROUP * self.bits as usize / 8;
        Group {
            scales: &self.scales[g * blocks * GROUP..][..blocks * GROUP],
            mins: &self.mins[g * blocks * GROUP..][..blocks * GROUP],
            quants: &self.quants[g * bytes..][..bytes],
        }
    }
}

/// [`BlockMatrix::matmul`] hands at most this many rows to the matrix-vector kernel.
const MATVEC_ROWS: usize = 16;

thread_local! {
    /// [`BlockMatrix::matmul`]'s panel, kept between calls: a fresh one per product would
    /// fault in its pages every time.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y[:, o0..o0 + n] = x · panelᵀ` on the calling thread, with x `[rows, inputs]`, the panel
/// `[n.., inputs]` and y `[rows, outputs]`, all row-major.
///
/// # Safety
/// `y` points to `rows · outputs` values, of which no other thread touches columns
/// `o0..o0 + n` during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_panel(
    x: &[f32],
    rows: usize,
    inputs: usize,
    panel: &[f32],
    n: usize,
    y: *mut f32,
    o0: usize,
    outputs: usize,
) {
    assert!(x.len() >= rows * inputs && panel.len() >= n * inputs);
    assert!(o0 + n <= outputs);
    #[cfg(not(target_arch = "wasm32"))]
    {
        // SAFETY: every element addressed lies inside the slices (asserted above) and inside
        // y (the caller's promise): dst (r, o) at y[r·outputs + o0 + o], lhs (r, i) at
        // x[r·inputs + i], rhs (i, o) at panel[o·inputs + i].
        unsafe {
            gemm::gemm(
                rows,
                n,
                inputs,
                y.add(o0),
                1,
                outputs as isize,
                false,
                x.as_ptr(),
                1,
                inputs as isize,
                panel.as_ptr(),
                inputs as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    // The browser's CPU path never holds a model in blocks only: correct and slow.
    #[cfg(target_arch = "wasm32")]
    for r in 0..rows {
        for o in 0..n {
            let w = &panel[o * inputs..][..inputs];
            let x = &x[r * inputs..][..inputs];
            // SAFETY: the caller's promise.
            unsafe { *y.add(r * outputs + o0 + o) = w.iter().zip(x).map(|(a, b)| a * b).sum() };
        }
    }
}

/// Threads a prompt's product is spread over.
fn parallel_threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        rayon::current_num_threads().max(1)
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

/// `f(0..n)`, over rayon's threads (natively).
fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
    #[cfg(target_arch = "wasm32")]
    (0..n).for_each(f);
}

/// Writes one group's rows `[GROUP, inputs]` in f32.
type DequantizeFn = fn(Group, &mut [f32]);

fn dequantize_fn(bits: u32) -> DequantizeFn {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY (both): the CPU has AVX2 and FMA, checked just above.
            return match bits {
                4 => |w, out| unsafe { dequantize_group_avx2::<4>(w, out) },
                _ => |w, out| unsafe { dequantize_group_avx2::<8>(w, out) },
            };
        }
    }
    match bits {
        4 => dequantize_group::<4>,
        _ => dequantize_group::<8>,
    }
}

/// f16 bits -> f32 (F16C where the CPU has it, chosen at run time by `half`).
fn widen(bits: &[u16]) -> [f32; GROUP] {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let mut out = [0f32; GROUP];
    bits.reinterpret_cast::<half::f16>()
        .convert_to_f32_slice(&mut out);
    out
}

/// `min + scale·k` for every value of the group's rows, written row by row.
#[inline(always)]
fn dequantize_group<const BITS: usize>(w: Group, out: &mut [f32]) {
    let inputs = out.len() / GROUP;
    let bytes = BLOCK * BITS / 8;
    let blocks = w.scales.len() / GROUP;
    for b in 0..blocks {
        let scales = widen(&w.scales[b * GROUP..][..GROUP]);
        let mins = widen(&w.mins[b * GROUP..][..GROUP]);
        for i in 0..GROUP {
            let at = b * GROUP + i;
            let (scale, min) = (scales[i], mins[i]);
            let q = &w.quants[at * bytes..][..bytes];
            let v: &mut [f32; BLOCK] = (&mut out[i * inputs + b * BLOCK..][..BLOCK])
                .try_into()
                .unwrap();
            if BITS == 8 {
                for (v, &q) in v.iter_mut().zip(q) {
                    *v = min + scale * q as f32;
                }
            } else {
                let q: &[u8; BLOCK / 2] = q.try_into().expect("16 bytes at 4 bits");
                for j in 0..BLOCK / 2 {
                    v[j] = min + scale * (q[j] & 0x0F) as f32;
                    v[j + BLOCK / 2] = min + scale * (q[j] >> 4) as f32;
                }
            }
        }
    }
}

/// [`dequantize_group`] compiled for AVX2 (the same loop, vectorised by the compiler).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequantize_group_avx2<const BITS: usize>(w: Group, out: &mut [f32]) {
    dequantize_group::<BITS>(w, out)
}

/// One block at `bits`: `v ≈ min + scale·k`.
struct Quantized {
    /// f16 bits.
    scale: u16,
    /// f16 bits.
    min: u16,
    /// The first `BLOCK · bits / 8` bytes are the block's.
    bytes: [u8; BLOCK],
}

/// One block at `bits` with f16 parameters: at 8 bits when every value lands within 0.6 of
/// a step of its level (None otherwise: values far outside f16's range, or a block whose
/// spread is tiny beside its size), at 4 bits only when the values lie on that grid (within
/// 1/1000 of a step: f32 rounding of a GGUF file's `d·k + m`).
fn quantize_block(block: &[f32], bits: u32) -> Option<Quantized> {
    use half::f16;
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let levels = ((1u32 << bits) - 1) as f32;
    // Rounded to f16 first, so that the levels are those the kernels will compute.
    let (min_h, scale_h) = (f16::from_f32(min), f16::from_f32((max - min) / levels));
    let (min, scale) = (min_h.to_f32(), scale_h.to_f32());
    if !min.is_finite() || !scale.is_finite() {
        return None;
    }
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut k = [0u8; BLOCK];
    for (k, v) in k.iter_mut().zip(block) {
        *k = ((v - min) * inv).round().clamp(0.0, levels) as u8;
    }
    // Written as "not all within" so that a NaN value counts as off.
    let off = |tolerance: f32| {
        !block
            .iter()
            .zip(&k)
            .all(|(v, &k)| (min + scale * k as f32 - v).abs() <= tolerance)
    };
    let mut bytes = [0u8; BLOCK];
    if bits == 8 {
        // A constant block (scale 0) must be its f16 minimum, up to f16's own rounding.
        if off((0.6 * scale).max(1e-3 * min.abs())) {
            return None;
        }
        bytes.copy_from_slice(&k);
    } else {
        if off(1e-3 * scale) {
            return None;
        }
        for j in 0..BLOCK / 2 {
            bytes[j] = k[j] | (k[j + BLOCK / 2] << 4);
        }
    }
    Some(Quantized {
        scale: scale_h.to_bits(),
        min: min_h.to_bits(),
        bytes,
    })
}

/// Runs `work` on each `chunk`-long piece of `out` (with its index), spread over the cores
/// when `parallel`: on the spinning helpers of [`crate::spin_pool`] (rayon's threads when
/// they are busy with another thread's product). Only a decoding step's products come here,
/// which follow each other within microseconds; a prompt's products run on rayon's threads
/// ([`BlockMatrix::matmul`]), beside which spinning helpers made prompts 1.4x slower. The
/// calling thread takes the first share itself.
#[cfg(not(target_arch = "wasm32"))]
fn for_each_chunk(
    out: &mut [f32],
    chunk: usize,
    parallel: bool,
    work: impl Fn((usize, &mut [f32])) + Sync + Send,
) {
    let chunks = out.len().div_ceil(chunk);
    let shares = match parallel {
        true => crate::spin_pool::threads().clamp(1, chunks.max(1)),
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
    // First the spinning helpers (a decoding step's ~120 products each wake parked rayon
    // threads otherwise).
    let len = out.len();
    let base = SharedOut(out.as_mut_ptr());
    let share = |s: usize| {
        let start = (s * per_share * chunk).min(len);
        let end = ((s + 1) * per_share * chunk).min(len);
        // SAFETY: shares cover disjoint ranges of `out`, which outlives the call.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.at(start), end - start) };
        run(s * per_share, piece);
    };
    if crate::spin_pool::run(shares, &share) {
        return;
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

/// An output's start, shared by threads that each write their own part of it (the shares of
/// [`for_each_chunk`], the panels of [`BlockMatrix::matmul`]).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: each user derives a part that no other thread writes.
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

impl SharedOut {
    /// A method, so that closures capture the whole (Sync) wrapper, not its raw field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[cfg(target_arch = "wasm32")]
fn for_each_chunk(out: &mut [f32], chunk: usize, _: bool, work: impl Fn((usize, &mut [f32]))) {
    out.chunks_mut(chunk).enumerate().for_each(work);
}

/// One group of weight rows: `[blocks, GROUP]` scales and minimums (f16 bits),
/// `[blocks, GROUP, BLOCK]` values.
#[derive(Clone, Copy)]
struct Group<'a> {
    scales: &'a [u16],
    mins: &'a [u16],
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

/// Whether this CPU runs the AVX2 + FMA + F16C kernels (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// The fastest dot product this CPU runs for `bits`.
fn dot_fn(bits: u32) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both): the CPU has AVX2 and FMA, checked just above.
        match (has_avx2(), bits) {
            (true, 4) => |w, x| unsafe { dot_group_avx2::<4>(w, x) },
            (true, _) => |w, x| unsafe { dot_group_avx2::<8>(w, x) },
            (false, 4) => dot_group_scalar::<4>,
            (false, _) => dot_group_scalar::<8>,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        match bits {
            4 => dot_group_scalar::<4>,
            _ => dot_group_scalar::<8>,
        }
    }
}

/// Block `b` of row `i` of a group, unpacked: k_0..k_31.
fn unpacked<const BITS: usize>(w: Group, b: usize, i: usize) -> [u8; BLOCK] {
    let bytes = BLOCK * BITS / 8;
    let q = &w.quants[(b * GROUP + i) * bytes..][..bytes];
    let mut k = [0u8; BLOCK];
    if BITS == 8 {
        k.copy_from_slice(q);
    } else {
        for j in 0..BLOCK / 2 {
            k[j] = q[j] & 0x0F;
            k[j + BLOCK / 2] = q[j] >> 4;
        }
    }
    k
}

/// For each row i of the group: Σ_b (scale_b · Σ k·x + min_b · Σ x) over the blocks.
fn dot_group_scalar<const BITS: usize>(w: Group, x: Row) -> [f32; GROUP] {
    let mut sums = [0f32; GROUP];
    for (b, xb) in x.values.chunks_exact(BLOCK).enumerate() {
        let scales = widen(&w.scales[b * GROUP..][..GROUP]);
        let mins = widen(&w.mins[b * GROUP..][..GROUP]);
        for (i, sum) in sums.iter_mut().enumerate() {
            let k = unpacked::<BITS>(w, b, i);
            let dot: f32 = k.iter().zip(xb).map(|(&k, &x)| k as f32 * x).sum();
            *sum += scales[i] * dot + mins[i] * x.sums[b];
        }
    }
    sums
}

/// [`dot_group_scalar`] in AVX2: x's block in four 8-lane vectors, shared by the group's
/// rows; each row's 32 values widened to f32 (at 4 bits: the low halves of 16 bytes, then the
/// high halves) and multiplied in, then scaled once per block.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_group_avx2<const BITS: usize>(w: Group, x: Row) -> [f32; GROUP] {
    use std::arch::x86_64::*;
    let bytes = BLOCK * BITS / 8;
    let blocks = x.sums.len();
    assert!(x.values.len() == blocks * BLOCK);
    assert!(w.scales.len() == blocks * GROUP && w.mins.len() == blocks * GROUP);
    assert!(w.quants.len() == blocks * GROUP * bytes);
    let low = _mm_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); GROUP];
    // Σ_b min_b · Σ x_b for the group's four rows, one lane each.
    let mut offsets = _mm_setzero_ps();
    for b in 0..blocks {
        // SAFETY: the group's four f16 scales and minimums of block b (asserted lengths).
        let (scales, mins) = unsafe {
            let four = |p: &[u16]| _mm_loadl_epi64(p.as_ptr().add(b * GROUP) as *const __m128i);
            (_mm_cvtph_ps(four(w.scales)), _mm_cvtph_ps(four(w.mins)))
        };
        offsets = _mm_fmadd_ps(mins, _mm_set1_ps(x.sums[b]), offsets);
        let mut scale = [0f32; GROUP];
        // SAFETY: four f32 into a four-element array.
        unsafe { _mm_storeu_ps(scale.as_mut_ptr(), scales) };
        let at = b * GROUP * bytes;
        // The group's blocks are one stream, fetched ahead.
        let ahead = w.quants.as_ptr().wrapping_add(at + PREFETCH);
        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        if BITS == 8 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
        }
        // SAFETY: block b of x and the group's blocks b lie inside the slices (asserted).
        let xv = [0, 1, 2, 3]
            .map(|k| unsafe { _mm256_loadu_ps(x.values.as_ptr().add(b * BLOCK + 8 * k)) });
        for (i, acc) in acc.iter_mut().enumerate() {
            let row = w.quants.as_ptr().wrapping_add(at + i * bytes);
            // Values 0-7, 8-15, 16-23, 24-31 as bytes in the low 8 of four registers.
            // SAFETY: as above.
            let parts = unsafe {
                if BITS == 8 {
                    [0, 1, 2, 3].map(|k| _mm_loadl_epi64(row.add(8 * k) as *const __m128i))
                } else {
                    let v = _mm_loadu_si128(row as *const __m128i);
                    let lo = _mm_and_si128(v, low);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), low);
                    [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
                }
            };
            let mut dot = _mm256_setzero_ps();
            for (part, xv) in parts.iter().zip(&xv) {
                let k = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(*part));
                dot = _mm256_fmadd_ps(k, *xv, dot);
            }
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(scale[i]), dot, *acc);
        }
    }
    let mut offset = [0f32; GROUP];
    // SAFETY: four f32 into a four-element array.
    unsafe { _mm_storeu_ps(offset.as_mut_ptr(), offsets) };
    let mut out = [0f32; GROUP];
    for ((out, v), offset) in out.iter_mut().zip(acc).zip(offset) {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        *out = _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad))) + offset;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values in [-1, 1) drawn from `seed`.
    fn uniform(seed: u64, n: usize) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
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
        let w = uniform(1, inputs * outputs);
        let q = BlockMatrix::from_in_out(&w, inputs, outputs).unwrap();
        for rows in [1, 3] {
            let x = uniform(2 + rows as u64, rows * inputs);
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

    /// `[inputs, outputs]` weights whose every block (32 consecutive inputs of one output) is
    /// GGUF Q4_1's `m + d·j`, j = 0..15, with both ends present and `d`, `m` in f16.
    fn q4_1_weights(seed: u64, inputs: usize, outputs: usize) -> Vec<f32> {
        let r = uniform(seed, inputs * outputs + 2 * outputs * inputs / BLOCK);
        let mut w = vec![0f32; inputs * outputs];
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        for o in 0..outputs {
            for b in 0..inputs / BLOCK {
                let at = inputs * outputs + 2 * (o * inputs / BLOCK + b);
                let (m, d) = (f16(r[at] * 0.1), f16(0.01 + 0.01 * r[at + 1].abs()));
                for j in 0..BLOCK {
                    let level = match j {
                        0 => 0.0,
                        1 => 15.0,
                        _ => ((r[(b * BLOCK + j) * outputs + o] + 1.0) * 7.99).floor(),
                    };
                    w[(b * BLOCK + j) * outputs + o] = m + d * level;
                }
            }
        }
        w
    }

    #[test]
    fn simd_and_scalar_dot_products_agree_at_4_and_8_bits() {
        let (inputs, outputs) = (256, 70);
        let values = uniform(6, inputs);
        let sums: Vec<f32> = values.chunks(BLOCK).map(|b| b.iter().sum()).collect();
        let x = Row {
            values: &values,
            sums: &sums,
        };
        for (w, bits) in [
            (uniform(5, inputs * outputs), 8),
            (q4_1_weights(7, inputs, outputs), 4),
        ] {
            let q = BlockMatrix::from_in_out(&w, inputs, outputs).unwrap();
            assert_eq!(q.bits(), bits);
            for g in 0..outputs.div_ceil(GROUP) {
                let w = q.group(g);
                let a = match bits {
                    4 => dot_group_scalar::<4>(w, x),
                    _ => dot_group_scalar::<8>(w, x),
                };
                for (a, b) in a.iter().zip(dot_fn(bits)(w, x)) {
                    let close = (a - b).abs() <= 1e-4 * (1.0 + a.abs());
                    assert!(close, "{bits} bits, group {g}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q4_1_weights_are_kept_at_4_bits_exactly_and_at_8_beside_others() {
        let (inputs, outputs) = (64, 9);
        let mut w = q4_1_weights(11, inputs, outputs);
        let x = uniform(9, 2 * inputs);
        let exact = |q: &BlockMatrix, w: &[f32]| {
            let (got, want) = (q.matvec(&x, 2), reference(&x, w, 2, inputs, outputs));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                    "{} bits: {g} vs {w}",
                    q.bits()
                );
            }
        };
        let q = BlockMatrix::from_in_out(&w, inputs, outputs).unwrap();
        assert_eq!(q.bits(), 4);
        exact(&q, &w);
        // One value off the grid (output 8, which also gets a constant block: scale 0): the
        // matrix goes to 8 bits, which still hold the other outputs' Q4_1 blocks (their levels
        // are every 17th of 255) up to the f16 rounding of d/17: 1 % of d at most.
        w[3 * outputs + 8] += 0.0031;
        for i in BLOCK..2 * BLOCK {
            w[i * outputs + 8] = 0.7;
        }
        let q = BlockMatrix::from_in_out(&w, inputs, outputs).unwrap();
        assert_eq!(q.bits(), 8);
        let (got, want) = (q.matvec(&x, 2), reference(&x, &w, 2, inputs, outputs));
        for r in 0..2 {
            for o in 0..outputs - 1 {
                let (g, w) = (got[r * outputs + o], want[r * outputs + o]);
                assert!(
                    (g - w).abs() < 1e-3 * (1.0 + w.abs()),
                    "output {o}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn products_of_many_rows_and_rows_of_the_table_read_the_same_blocks() {
        // 40 rows: past the matrix-vector kernel's 16, so a dequantized panel and the GEMM.
        let (inputs, outputs, rows) = (64, 9, 40);
        let w = q4_1_weights(13, inputs, outputs);
        let q = BlockMatrix::from_in_out(&w, inputs, outputs).unwrap();
        let x = uniform(14, rows * inputs);
        let (got, want) = (q.matmul(&x, rows), reference(&x, &w, rows, inputs, outputs));
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
        // Output rows as a table (the tied head read as token embeddings): the values at 4
        // bits, up to f32 rounding of `min + scale·k`.
        let table = q.rows(&[8, 0, 8]);
        for (k, o) in [8, 0, 8].into_iter().enumerate() {
            for i in 0..inputs {
                let (t, w) = (table[k * inputs + i], w[i * outputs + o]);
                assert!(
                    (t - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "row {o}, input {i}: {t} vs {w}"
                );
            }
        }
        // 8 bits, a matrix of many panels (6.3M values, ~1 MB panels over 1024-wide rows).
        let (inputs, outputs, rows) = (1024, 6150, 20);
        let w = uniform(15, inputs * outputs);
        let q = BlockMatrix::from_in_out(&w, inputs, outputs).unwrap();
        let x = uniform(16, rows * inputs);
        let got = q.matmul(&x, rows);
        let chunks: Vec<f32> = [&x[..10 * inputs], &x[10 * inputs..]]
            .iter()
            .flat_map(|x| q.matvec(x, 10))
            .collect();
        for (g, c) in got.iter().zip(&chunks) {
            assert!((g - c).abs() < 1e-3 * (1.0 + c.abs()), "{g} vs {c}");
        }
    }

    #[test]
    fn shapes_that_do_not_fill_blocks_are_refused() {
        assert!(BlockMatrix::from_in_out(&[0.0; 40], 20, 2).is_none());
        assert!(BlockMatrix::from_in_out(&[0.0; 10], 32, 2).is_none());
    }

    #[test]
    fn blocks_that_f16_parameters_cannot_hold_are_refused() {
        // Past f16's largest value (65504): the matrix stays f32 rather than decode to infinity.
        assert!(BlockMatrix::from_in_out(&[1e5; 64], 32, 2).is_none());
        let mut w = uniform(17, 64);
        w[5] = f32::NAN;
        assert!(BlockMatrix::from_in_out(&w, 32, 2).is_none());
        assert!(BlockMatrix::from_in_out(&uniform(17, 64), 32, 2).is_some());
    }
}
