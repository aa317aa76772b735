//! The trainable part of a model as safetensors bytes: parameters that require gradients
//! (compressor, memory tokens, projector, LoRA factors), named by their module path. The frozen
//! generator is not stored: it is reloaded from its own file.

use crate::compressor::CompressorConfig;
use crate::weights::safetensors::SafetensorsFile;
use crate::weights::{WeightError, WeightSource};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
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
