//! Weight files read from bytes (no file system, so that the browser can pass fetched bytes):
//! GGUF (llama.cpp) and safetensors (Hugging Face). Both yield f32 tensors by name.

pub mod gguf;
pub mod safetensors;

use burn::tensor::{Device, Tensor, TensorData};

#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("invalid weight file: {0}")]
    Format(String),
    #[error("missing tensor `{0}`")]
    Missing(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("invalid model config: {0}")]
    Config(String),
}

/// A dequantised tensor: row-major f32 values with their shape.
#[derive(Debug, Clone)]
pub struct TensorData32 {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl TensorData32 {
    /// Transposes a 2-D matrix: checkpoints store linear weights as [out, in], Burn's `Linear`
    /// multiplies by [in, out].
    pub fn transposed(&self) -> Self {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let mut values = vec![0.0; self.values.len()];
        for r in 0..rows {
            for c in 0..cols {
                values[c * rows + r] = self.values[r * cols + c];
            }
        }
        Self {
            shape: vec![cols, rows],
            values,
        }
    }
}

/// Anything that can produce named f32 tensors.
pub trait WeightSource {
    fn tensor(&self, name: &str) -> Result<TensorData32, WeightError>;
    fn contains(&self, name: &str) -> bool;
}

/// Reads `name` and checks its shape before it becomes a tensor.
pub fn load<const D: usize>(
    src: &dyn WeightSource,
    name: &str,
    expected: [usize; D],
    device: &Device,
) -> Result<Tensor<D>, WeightError> {
    let t = src.tensor(name)?;
    to_tensor(name, t, expected, device)
}

pub fn to_tensor<const D: usize>(
    name: &str,
    t: TensorData32,
    expected: [usize; D],
    device: &Device,
) -> Result<Tensor<D>, WeightError> {
    if t.shape != expected {
        return Err(WeightError::Shape {
            name: name.to_string(),
            found: t.shape,
            expected: expected.to_vec(),
        });
    }
    Ok(Tensor::from_data(
        TensorData::new(t.values, expected),
        device,
    ))
}

impl WeightSource for gguf::GgufFile<'_> {
    fn tensor(&self, name: &str) -> Result<TensorData32, WeightError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| WeightError::Missing(name.into()))?;
        Ok(self.dequantize(info))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }
}

/// A Hugging Face `nn.Linear` `name` (`{name}.weight` stored `[out, in]`, and `{name}.bias`
/// when `bias`) as Burn's `Linear`, which multiplies by `[in, out]`.
pub fn linear(
    src: &dyn WeightSource,
    name: &str,
    [out, inp]: [usize; 2],
    bias: bool,
    device: &Device,
) -> Result<burn::nn::Linear, WeightError> {
    use burn::module::Param;
    let wname = format!("{name}.weight");
    let w = src.tensor(&wname)?;
    if w.shape != [out, inp] {
        return Err(WeightError::Shape {
            name: wname,
            found: w.shape,
            expected: vec![out, inp],
        });
    }
    let weight = to_tensor(&wname, w.transposed(), [inp, out], device)?;
    let bias = bias
        .then(|| load(src, &format!("{name}.bias"), [out], device))
        .transpose()?;
    Ok(burn::nn::Linear {
        weight: Param::from_tensor(weight),
        bias: bias.map(Param::from_tensor),
    })
}
