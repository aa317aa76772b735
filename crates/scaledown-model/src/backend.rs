//! Run-time choice of the compute backend.

use burn::prelude::Device;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Burn's pure-Rust CPU backend.
    Flex,
    /// wgpu with WGSL shaders: Vulkan, Metal or DX12 natively, WebGPU in the browser.
    Wgpu,
    /// NVIDIA GPUs (the `cuda` cargo feature).
    Cuda,
}

impl BackendKind {
    /// The device, or an error naming the cargo feature that this build lacks.
    pub fn device(self) -> Result<Device, String> {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "this build has no {other} backend (enable the `{other}` cargo feature)"
            )),
        }
    }
}

/// Whether `device` is Burn's CPU backend (native or wasm).
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        *device == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether `device` is Burn's CPU backend in a native build, where the host-side kernels of
/// [`crate::quant`] run on the same memory as the tensors.
pub fn is_native_cpu(device: &Device) -> bool {
    !cfg!(target_arch = "wasm32") && is_cpu(device)
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flex" | "cpu" => Ok(Self::Flex),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown backend `{other}` (flex, wgpu, cuda)")),
        }
    }
}
