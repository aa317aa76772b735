//! The trainable part of a model as safetensors bytes: parameters that require gradients
//! (compressor, memory tokens, projector, LoRA factors), named by their module path. The frozen
//! generator is not stored: it is reloaded from its own file.

use crate::compressor::CompressorConfig;
use crate::weights::safetensors::SafetensorsFile;
use crate::weights::{WeightError, WeightSource};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `setup.json` of a checkpoint folder: everything needed to rebuild the model around its
/// trained tensors. The paths are where the CLI found the published files; the browser gets
/// the same files from its user instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OscarSetup {
    pub compressor: CompressorConfig,
    pub generator: PathBuf,
    pub encoder: Option<PathBuf>,
    /// LoRA rank on the generator's linear layers; None when the generator is frozen.
    pub lora_rank: Option<usize>,
    pub lora_alpha: f64,
    pub max_new_tokens: usize,
}

/// Module path of the parameter being visited, e.g. `compressor.memory`.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn joined(&self) -> String {
        self.0.join(".")
    }
}

struct Collect {
    path: Path,
    out: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let shape = value.dims().to_vec();
        let values = value
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float parameter");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out.insert(self.path.joined(), (shape, bytes));
    }
}

/// The trainable parameters of `module` as a safetensors file.
pub fn trainable_to_safetensors<M: Module>(module: &M) -> Vec<u8> {
    let mut c = Collect {
        path: Path::default(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    let views: Vec<(String, TensorView<'_>)> = c
        .out
        .iter()
        .map(|(name, (shape, bytes))| {
            let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .expect("shape matches the data");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("in-memory serialisation")
}

struct Apply<'a> {
    path: Path,
    file: &'a SafetensorsFile<'a>,
    used: usize,
    error: Option<WeightError>,
}

impl ModuleMapper for Apply<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.joined();
        if self.error.is_some() || !self.file.contains(&name) {
            return param;
        }
        let loaded = match self.file.tensor(&name) {
            Ok(t) => t,
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        let expected = param.val().dims().to_vec();
        if loaded.shape != expected {
            self.error = Some(WeightError::Shape {
                name,
                found: loaded.shape,
                expected,
            });
            return param;
        }
        self.used += 1;
        param.map(|old| {
            let trainable = old.is_require_grad();
            let device = old.device();
            Tensor::<D>::from_data(TensorData::new(loaded.values, loaded.shape), &device)
                .set_require_grad(trainable)
        })
    }
}

/// Loads parameters written by [`trainable_to_safetensors`] into `module` (same structure).
/// Every tensor in the file must land somewhere, with the same shape.
pub fn load_trainable<M: Module>(module: M, bytes: &[u8]) -> Result<M, WeightError> {
    let file = SafetensorsFile::parse(bytes)?;
    let mut apply = Apply {
        path: Path::default(),
        file: &file,
        used: 0,
        error: None,
    };
    let module = module.map(&mut apply);
    if let Some(e) = apply.error {
        return Err(e);
    }
    let names = file.names();
    if apply.used != names.len() {
        return Err(WeightError::Format(format!(
            "checkpoint holds {} tensors but only {} match this model's structure \
             (was it written for another compressor configuration?)",
            names.len(),
            apply.used
        )));
    }
    Ok(module)
}

/// Gives every float parameter of `module` an id derived from its module path (FNV-1a), so
/// that an optimiser's state, which Burn keys by parameter id, finds its parameters again in
/// another process (`--resume`). Burn draws ids at random when a module is built; parameters
/// that shared an id (tied weights) still share one.
pub fn with_path_param_ids<M: Module>(module: M) -> M {
    module.map(&mut PathIds {
        path: Path::default(),
        given: BTreeMap::new(),
    })
}

struct PathIds {
    path: Path,
    /// Old id → new id, so that a parameter met at two paths keeps one id.
    given: BTreeMap<u64, u64>,
}

impl ModuleMapper for PathIds {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let path = self.path.joined();
        let new = *self.given.entry(id.val()).or_insert_with(|| fnv1a(&path));
        Param::from_mapped_value(ParamId::from(new), tensor, mapper)
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `manifest.json` of a checkpoint folder: every other file's SHA-256 and size, written last,
/// so that a folder whose bytes changed on disk is refused instead of answering from garbage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: BTreeMap<String, FileDigest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Lower-case hex.
    pub sha256: String,
    pub bytes: u64,
}

impl FileDigest {
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(bytes);
        Self {
            sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
            bytes: bytes.len() as u64,
        }
    }
}

impl Manifest {
    pub const FILE: &'static str = "manifest.json";

    /// The manifest of `(file name, contents)` pairs.
    pub fn of<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        Self {
            files: files
                .into_iter()
                .map(|(name, bytes)| (name.to_string(), FileDigest::of(bytes)))
                .collect(),
        }
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("{}: {e}", Self::FILE))
    }

    /// Whether `bytes` are the contents the manifest records for `name`; the error says what
    /// differs.
    pub fn check(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let Some(want) = self.files.get(name) else {
            return Err(format!("{name} is not listed in {}", Self::FILE));
        };
        if want.bytes != bytes.len() as u64 {
            return Err(format!(
                "{name} is {} bytes, {} records {} (truncated or replaced)",
                bytes.len(),
                Self::FILE,
                want.bytes
            ));
        }
        if FileDigest::of(bytes).sha256 != want.sha256 {
            return Err(format!(
                "{name} does not match its SHA-256 in {} (damaged on disk)",
                Self::FILE
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod manifest_tests {
    use super::*;

    #[test]
    fn a_manifest_accepts_its_files_and_names_what_changed() {
        let (setup, weights) = (b"{\"a\": 1}".as_slice(), vec![7u8; 1000]);
        let m = Manifest::of([
            ("setup.json", setup),
            ("trainable.safetensors", &weights[..]),
        ]);
        // The SHA-256 of the empty string, as a known value.
        assert_eq!(
            FileDigest::of(b"").sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let m = Manifest::from_json(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(m.check("setup.json", setup).is_ok());
        assert!(m.check("trainable.safetensors", &weights).is_ok());
        let mut flipped = weights.clone();
        flipped[500] ^= 1;
        let e = m.check("trainable.safetensors", &flipped).unwrap_err();
        assert!(
            e.contains("trainable.safetensors") && e.contains("SHA-256"),
            "{e}"
        );
        let e = m
            .check("trainable.safetensors", &weights[..999])
            .unwrap_err();
        assert!(e.contains("999 bytes") && e.contains("1000"), "{e}");
        let e = m.check("state.json", b"{}").unwrap_err();
        assert!(e.contains("not listed"), "{e}");
        assert!(Manifest::from_json("{\"files\": 3}").is_err());
    }
}
