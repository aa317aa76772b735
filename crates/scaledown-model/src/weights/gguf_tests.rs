//! GGUF reader tests on files built in memory.

use super::*;
use half::{bf16, f16};

/// A minimal GGUF writer for tests: metadata of strings and u32s, tensors as raw bytes.
pub(crate) struct Writer {
    pub meta: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn gstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

impl Writer {
    pub fn new() -> Self {
        Self {
            meta: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn string(mut self, k: &str, v: &str) -> Self {
        self.meta.push((k.into(), 8, gstr(v)));
        self
    }

    pub fn u32(mut self, k: &str, v: u32) -> Self {
        self.meta.push((k.into(), 4, v.to_le_bytes().to_vec()));
        self
    }

    /// `ne` is GGUF order (fastest first).
    pub fn tensor(mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), ne.to_vec(), ty, data));
        self
    }

    pub fn f32_tensor(self, name: &str, ne: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, ne, 0, data)
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.meta.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.meta {
            out.extend(gstr(k));
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, ne, ty, data) in &self.tensors {
            out.extend(gstr(name));
            out.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend(data);
        }
        out
    }
}

fn err(bytes: &[u8]) -> String {
    match GgufFile::parse(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_metadata_and_f32_tensor() {
    let bytes = Writer::new()
        .string("general.architecture", "llama")
        .u32("llama.block_count", 7)
        .f32_tensor("w", &[3, 2], &[1., 2., 3., 4., 5., 6.])
        .bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(
        f.meta("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(f.meta("llama.block_count").unwrap().as_u64(), Some(7));
    let t = f.dequantize(f.tensor_info("w").unwrap());
    assert_eq!(
        t.shape,
        vec![2, 3],
        "GGUF ne [3, 2] is a 2x3 row-major matrix"
    );
    assert_eq!(t.values, vec![1., 2., 3., 4., 5., 6.]);
}

#[test]
fn dequantises_every_supported_type() {
    let d = f16::from_f32(0.5);
    let m = f16::from_f32(-1.0);
    // Q8_0: d, then 32 signed bytes.
    let mut q8 = d.to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    // Q4_0: d, then 16 bytes: low nibble -> element j, high nibble -> element j + 16.
    let mut q40 = d.to_le_bytes().to_vec();
    q40.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    // Q4_1: d, m, then nibbles as Q4_0 without the -8 offset.
    let mut q41 = d.to_le_bytes().to_vec();
    q41.extend(m.to_le_bytes());
    q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let f16s: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = [3.0f32, -0.25]
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    let bytes = Writer::new()
        .tensor("q8", &[32], 8, q8)
        .tensor("q40", &[32], 2, q40)
        .tensor("q41", &[32], 3, q41)
        .tensor("f16", &[2], 1, f16s)
        .tensor("bf16", &[2], 30, bf16s)
        .bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    let get = |n| f.dequantize(f.tensor_info(n).unwrap()).values;
    let q8 = get("q8");
    assert_eq!(q8[0], -8.0);
    assert_eq!(q8[31], 7.5);
    let q40 = get("q40");
    assert_eq!(q40[0], -4.0); // (0 - 8) * 0.5
    assert_eq!(q40[15], 3.5); // (15 - 8) * 0.5
    assert_eq!(q40[16], 3.5); // high nibble of byte 0 = 15
    assert_eq!(q40[31], -4.0);
    let q41 = get("q41");
    assert_eq!(q41[0], -1.0); // 0 * 0.5 - 1
    assert_eq!(q41[15], 6.5); // 15 * 0.5 - 1
    assert_eq!(q41[16], 6.5);
    assert_eq!(get("f16"), vec![1.5, -2.0]);
    assert_eq!(get("bf16"), vec![3.0, -0.25]);
}

#[test]
fn k_quants_dequantise_as_llama_cpp_does() {
    // Random super-blocks and their values from gguf-py, llama.cpp's own Python package
    // (scripts/kquant_reference.py).
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("kquants_reference.json")).unwrap();
    for (name, case) in reference.as_object().unwrap() {
        let hex = case["bytes"].as_str().unwrap();
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let ty = case["type"].as_u64().unwrap() as u32;
        let bytes = Writer::new()
            .tensor("w", &[want.len() as u64], ty, raw)
            .bytes();
        let f = GgufFile::parse(&bytes).unwrap();
        let got = f.dequantize(f.tensor_info("w").unwrap()).values;
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{name}, value {i}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn refuses_bad_files_with_a_named_problem() {
    let good = Writer::new()
        .string("k", "v")
        .f32_tensor("w", &[4], &[1.; 4])
        .bytes();
    assert!(GgufFile::parse(&good).is_ok());

    assert!(err(b"GGML\x03\0\0\0").contains("magic"));
    assert!(err(b"GG").contains("truncated"));
    let mut v1 = good.clone();
    v1[4] = 1;
    assert!(err(&v1).contains("version 1"));
    // Every truncation of a valid file is refused, never a panic.
    for n in 0..good.len() {
        assert!(
            GgufFile::parse(&good[..n]).is_err(),
            "prefix of {n} bytes accepted"
        );
    }
    // Absurd counts: a tensor count no file of this size can hold.
    let mut absurd = good.clone();
    absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&absurd).contains("absurd tensor count"));
    let mut absurd = good.clone();
    absurd[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(&absurd).contains("absurd metadata count"));
    // Array claiming 2^60 elements.
    let mut arr = Writer::new();
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend((1u64 << 60).to_le_bytes());
    arr.meta.push(("a".into(), 9, v));
    assert!(err(&arr.bytes()).contains("absurd array length"));
    // Unknown tensor type, dimensions that overflow, data past the end.
    let unknown = Writer::new().tensor("w", &[4], 99, vec![0; 16]).bytes();
    assert!(err(&unknown).contains("unsupported GGUF tensor type 99"));
    let huge = Writer::new()
        .tensor("w", &[u64::MAX, 4], 0, vec![0; 16])
        .bytes();
    assert!(err(&huge).contains("absurd dimensions"));
    let past = Writer::new()
        .tensor("w", &[1 << 20], 0, vec![0; 16])
        .bytes();
    assert!(err(&past).contains("past the end"));
    let five_dims = Writer::new()
        .tensor("w", &[1, 1, 1, 1, 1], 0, vec![0; 4])
        .bytes();
    assert!(err(&five_dims).contains("5 dimensions"));
    let ragged = Writer::new().tensor("w", &[31], 8, vec![0; 34]).bytes();
    assert!(err(&ragged).contains("block size"));
}
