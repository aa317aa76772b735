//! Hugging Face safetensors, through HF's own parser, which validates the header and every
//! tensor's byte range against the buffer before we read anything.

use super::{TensorData32, WeightError, WeightSource};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

pub struct SafetensorsFile<'a> {
    inner: SafeTensors<'a>,
}

impl<'a> SafetensorsFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WeightError> {
        let inner = SafeTensors::deserialize(bytes)
            .map_err(|e| WeightError::Format(format!("safetensors: {e}")))?;
        Ok(Self { inner })
    }

    pub fn names(&self) -> Vec<String> {
        self.inner
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl WeightSource for SafetensorsFile<'_> {
    fn tensor(&self, name: &str) -> Result<TensorData32, WeightError> {
        let view = self
            .inner
            .tensor(name)
            .map_err(|_| WeightError::Missing(name.into()))?;
        let raw = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(WeightError::Format(format!(
                    "tensor {name}: dtype {other:?} is not supported (F32, F16, BF16 are)"
                )));
            }
        };
        Ok(TensorData32 {
            shape: view.shape().to_vec(),
            values,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.tensor(name).is_ok()
    }
}
