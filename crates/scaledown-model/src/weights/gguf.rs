//! GGUF v2/v3 reader over an in-memory byte slice (the browser hands us fetched bytes).
//!
//! We read GGUF ourselves rather than through a crate: the maintained Rust readers either
//! require memory-mapped files or trust header counts when allocating, and this reader must
//! refuse hostile files without panicking. Every count and size read from the header is checked
//! against the bytes that actually remain before anything is allocated.

use super::{TensorData32, WeightError};
use half::{bf16, f16};
use std::collections::HashMap;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// A metadata value. Arrays keep their element values (tokens, merges, token types).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type as u64 (GGUF writers differ in which integer width they use).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types that we can dequantise (named as ggml names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// The K-quants of llama.cpp's `Q4_K_M` / `Q5_K_M` / `Q6_K` files: super-blocks of 256.
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Result<Self, WeightError> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => {
                return Err(WeightError::Format(format!(
                    "unsupported GGUF tensor type {other} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
                )));
            }
        })
    }

    /// (elements per block, bytes per block)
    fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Row-major shape, slowest dimension first (GGUF stores ne[0], the fastest, first).
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte range of the tensor data in the file.
    start: usize,
    len: usize,
}

/// A parsed GGUF file borrowing its bytes.
pub struct GgufFile<'a> {
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: Vec<GgufTensorInfo>,
    bytes: &'a [u8],
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WeightError> {
        if n > self.remaining() {
            return Err(WeightError::Format(format!(
                "truncated file: {what} needs {n} bytes at offset {}, only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WeightError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, WeightError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WeightError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must be satisfiable by the remaining bytes at `min_size` bytes per item.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, WeightError> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_size.max(1)) as u64;
        if n > max {
            return Err(WeightError::Format(format!(
                "absurd {what} {n}: the {} remaining bytes hold at most {max}",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, WeightError> {
        let n = self.count(what, 1)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| WeightError::Format(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, WeightError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>("u8")?[0]),
            1 => MetaValue::I8(self.array::<1>("i8")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => MetaValue::U32(self.u32("u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(WeightError::Format(format!("invalid bool byte {b}"))),
            },
            8 => MetaValue::String(self.string("string length")?),
            9 => {
                if depth > 2 {
                    return Err(WeightError::Format(
                        "metadata arrays nested too deeply".into(),
                    ));
                }
                let elem_ty = self.u32("array element type")?;
                let min = min_value_size(elem_ty)?;
                let n = self.count("array length", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64("u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("f64")?)),
            other => {
                return Err(WeightError::Format(format!(
                    "unknown metadata value type {other}"
                )));
            }
        })
    }
}

/// Smallest encoded size of a value of type `ty`, used to bound array lengths.
fn min_value_size(ty: u32) -> Result<usize, WeightError> {
    Ok(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        other => {
            return Err(WeightError::Format(format!(
                "unknown metadata array type {other}"
            )));
        }
    })
}

impl<'a> GgufFile<'a> {
    /// Parses the header, metadata and tensor infos; tensor data is read lazily.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WeightError> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(4, "magic")? != MAGIC {
            return Err(WeightError::Format("wrong magic: not a GGUF file".into()));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(WeightError::Format(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        // A tensor info takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes;
        // a key-value pair at least 8 (key) + 4 (type) + 1 (value).
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 13)?;

        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let value = c.value(ty, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(WeightError::Format(format!(
                        "invalid general.alignment {v:?}"
                    )));
                }
            },
        };

        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(WeightError::Format(format!(
                    "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(c.u64("tensor dimension")?);
            }
            let ty = GgmlType::from_id(c.u32("tensor type")?)
                .map_err(|e| WeightError::Format(format!("tensor {name}: {e}")))?;
            let offset = c.u64("tensor offset")?;
            infos.push((name, ne, ty, offset));
        }

        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, ne, ty, offset) in infos {
            let n_elements = ne
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    WeightError::Format(format!("tensor {name}: absurd dimensions {ne:?}"))
                })?;
            let (block_elems, block_bytes) = ty.block();
            if ne[0] % block_elems != 0 {
                return Err(WeightError::Format(format!(
                    "tensor {name}: row length {} is not a multiple of the {ty:?} block size {block_elems}",
                    ne[0]
                )));
            }
            let len = (n_elements / block_elems)
                .checked_mul(block_bytes)
                .ok_or_else(|| WeightError::Format(format!("tensor {name}: size overflows")))?;
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(s), Some(e)) if e <= bytes.len() as u64 => {
                    if offset % alignment != 0 {
                        return Err(WeightError::Format(format!(
                            "tensor {name}: offset {offset} is not aligned to {alignment}"
                        )));
                    }
                    tensors.push(GgufTensorInfo {
                        name,
                        shape: ne.iter().rev().map(|&d| d as usize).collect(),
                        ggml_type: ty,
                        start: s as usize,
                        len: len as usize,
                    });
                }
                _ => {
                    return Err(WeightError::Format(format!(
                        "tensor {name}: data (offset {offset}, {len} bytes) lies past the end of the {}-byte file",
                        bytes.len()
                    )));
                }
            }
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantises one tensor to f32, row-major in `info.shape`.
    pub fn dequantize(&self, info: &GgufTensorInfo) -> TensorData32 {
        let raw = &self.bytes[info.start..info.start + info.len];
        TensorData32 {
            shape: info.shape.clone(),
            values: dequantize(info.ggml_type, raw),
        }
    }
}

/// Dequantises `raw`, whose length the caller has checked to be whole blocks.
pub fn dequantize(ty: GgmlType, raw: &[u8]) -> Vec<f32> {
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match ty {
        GgmlType::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => raw.chunks_exact(2).map(|b| f16_at(b, 0)).collect(),
        GgmlType::BF16 => raw
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(raw.len() / 34 * 32);
            for block in raw.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
            }
            out
        }
        // 4-bit blocks: low nibbles are elements 0..16, high nibbles elements 16..32.
        GgmlType::Q4_0 => {
            let mut out = Vec::with_capacity(raw.len() / 18 * 32);
            for block in raw.chunks_exact(18) {
                let d = f16_at(block, 0);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xF) as f32 - 8.0) * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as f32 - 8.0) * d));
            }
            out
        }
        GgmlType::Q4_1 => {
            let mut out = Vec::with_capacity(raw.len() / 20 * 32);
            for block in raw.chunks_exact(20) {
                let d = f16_at(block, 0);
                let m = f16_at(block, 2);
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
            out
        }
        // 5-bit blocks: d (and m), 32 fifth bits, then nibbles as Q4_0 / Q4_1. What a K-quant
        // file holds where a row is not a multiple of 256 (SmolLM2's 576-wide matrices).
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let offset = ty == GgmlType::Q5_1;
            let size = if offset { 24 } else { 22 };
            let mut out = Vec::with_capacity(raw.len() / size * 32);
            for block in raw.chunks_exact(size) {
                let d = f16_at(block, 0);
                let (m, at) = match offset {
                    true => (f16_at(block, 2), 4),
                    false => (-16.0 * d, 2),
                };
                let qh = u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
                let qs = &block[at + 4..];
                let fifth = |j: usize| (((qh >> j) & 1) << 4) as u8;
                out.extend((0..16).map(|j| ((qs[j] & 0xF) | fifth(j)) as f32 * d + m));
                out.extend((0..16).map(|j| ((qs[j] >> 4) | fifth(j + 16)) as f32 * d + m));
            }
            out
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ty == GgmlType::Q5_K;
            let size = if five { 176 } else { 144 };
            let mut out = Vec::with_capacity(raw.len() / size * 256);
            for block in raw.chunks_exact(size) {
                // d, dmin, 12 bytes of 6-bit scales and minimums for the 8 sub-blocks of 32,
                // (Q5_K: 32 bytes of fifth bits,) then 128 bytes of low nibbles.
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let scales: &[u8; 12] = block[4..16].try_into().expect("12 bytes");
                let (qh, qs) = match five {
                    true => (&block[16..48], &block[48..176]),
                    false => (&[0u8; 32][..], &block[16..144]),
                };
                // Sub-blocks 2i and 2i+1 share 32 bytes: low nibbles, then high nibbles.
                for i in 0..4 {
                    for (half, shift) in [(0, 0), (1, 4)] {
                        let (sc, m) = k_scale_min(2 * i + half, scales);
                        let (scale, min) = (d * sc as f32, dmin * m as f32);
                        let bit = 1u8 << (2 * i + half);
                        out.extend(qs[32 * i..32 * (i + 1)].iter().zip(qh).map(|(&q, &h)| {
                            let fifth = if h & bit != 0 { 16.0 } else { 0.0 };
                            scale * (((q >> shift) & 0xF) as f32 + fifth) - min
                        }));
                    }
                }
            }
            out
        }
        GgmlType::Q6_K => {
            let mut out = Vec::with_capacity(raw.len() / 210 * 256);
            for block in raw.chunks_exact(210) {
                // 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 signed 8-bit scales
                // (one per 16 values), then d.
                let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
                let d = f16_at(block, 208);
                let mut y = [0f32; 256];
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let sc = &scales[8 * half..];
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, high: u8| (low & 0xF | (high & 3) << 4) as i32 - 32;
                        let quarter = [
                            q(ql[l], qh[l]),
                            q(ql[l + 32], qh[l] >> 2),
                            q(ql[l] >> 4, qh[l] >> 4),
                            q(ql[l + 32] >> 4, qh[l] >> 6),
                        ];
                        for (k, q) in quarter.into_iter().enumerate() {
                            y[l + 32 * k] = d * (sc[is + 2 * k] as i8) as f32 * q as f32;
                        }
                    }
                }
                out.extend_from_slice(&y);
            }
            out
        }
    }
}

/// Scale and minimum of sub-block `j` (0..8) of a Q4_K / Q5_K super-block: 6 bits each,
/// packed in 12 bytes (llama.cpp's `get_scale_min_k4`).
fn k_scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    match j < 4 {
        true => (q[j] & 63, q[j + 4] & 63),
        false => (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        ),
    }
}

#[cfg(test)]
#[path = "gguf_tests.rs"]
pub(crate) mod tests;
