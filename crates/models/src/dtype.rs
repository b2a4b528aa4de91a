//! Weight precision (`dtype: f32 | f16 | bf16`). The weights of the linear maps and the embedding
//! tables are placed on the device in the chosen dtype and read as f32 where they are used (one cast
//! per use), so activations, keys, targets and statistics stay f32 and the solves f64. A layer
//! written by an edit is stored in f32 from then on: an update much smaller than the weight would
//! otherwise be rounded away. Norms and biases stay f32 (a few kilobytes).
//!
//! A backend that cannot store half floats (burn-ndarray, the CPU backend) keeps f32 tensors whose
//! values are rounded to the dtype: the numbers of a half-precision model without its memory saving.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::{Backend, DTypeUsage};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::weights::HostTensor;

/// The dtype weights are kept in on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDType {
    #[default]
    F32,
    F16,
    BF16,
}

impl WeightDType {
    /// Bytes per weight on a backend that stores this dtype.
    pub fn bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    fn burn(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }

    /// Whether `B` keeps tensors of this dtype on `device` (if not, weights are rounded to it and
    /// kept in f32).
    pub fn stored_natively<B: Backend>(self, device: &B::Device) -> bool {
        self == Self::F32 || B::dtype_usage(device, self.burn()).contains(DTypeUsage::Storage)
    }

    /// Whether `backend` stores weights of this dtype as such, as far as is known without a device
    /// (the memory plan's rule; loading asks the device, [`Self::stored_natively`]): f32 everywhere,
    /// f16 on wgpu (WGSL's `f16`, offered by lavapipe and current GPU drivers) and cuda, bf16 on cuda
    /// only (WGSL has none). The CPU backend stores no half floats.
    pub fn stored_on(self, backend: BackendKind) -> bool {
        matches!(
            (self, backend),
            (Self::F32, _)
                | (Self::F16, BackendKind::Wgpu | BackendKind::Cuda)
                | (Self::BF16, BackendKind::Cuda)
        )
    }

    /// `data` rounded to the nearest value of this dtype (ties to even), kept in f32.
    pub fn round(self, data: &mut [f32]) {
        match self {
            Self::F32 => {}
            Self::F16 => data.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32()),
            Self::BF16 => data.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32()),
        }
    }

    /// `host` on `device` in this dtype, or rounded to it in f32 where `B` cannot store it.
    pub fn place<B: Backend, const D: usize>(
        self,
        host: HostTensor,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let HostTensor { shape, mut data } = host;
        if self.stored_natively::<B>(device) {
            return Tensor::from_data(TensorData::new(data, shape), (device, self.burn()));
        }
        self.round(&mut data);
        Tensor::from_data(TensorData::new(data, shape), device)
    }
}

/// `t` as f32, how every computation reads a weight (no operation when it is f32 already).
pub fn as_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match t.dtype() {
        DType::F32 => t,
        _ => t.cast(FloatDType::F32),
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

impl FromStr for WeightDType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            other => Err(format!("unknown dtype `{other}` (expected f32, f16 or bf16)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cuda_is_known_to_store_bf16_and_the_cpu_no_half_float() {
        use BackendKind::*;
        let stored = |d: WeightDType| [Cpu, Wgpu, Cuda].map(|b| d.stored_on(b));
        assert_eq!(stored(WeightDType::F32), [true, true, true]);
        assert_eq!(stored(WeightDType::F16), [false, true, true]);
        assert_eq!(stored(WeightDType::BF16), [false, false, true]);
    }

    #[test]
    fn rounding_keeps_representable_values_and_rounds_to_the_nearest() {
        let mut v = vec![1.0, -2.5, 1.0 + 1.0 / 4096.0, 1.0 + 3.0 / 2048.0, 65504.0];
        WeightDType::F16.round(&mut v);
        // f16 has 10 mantissa bits: 1 + 2^-12 rounds to 1, 1 + 3·2^-11 (a tie) to the even 1 + 2^-9.
        assert_eq!(v, vec![1.0, -2.5, 1.0, 1.0 + 4.0 / 2048.0, 65504.0]);
        let mut w = vec![1.0 + 1.0 / 256.0, 3.0, 1.0 + 1.0 / 64.0];
        WeightDType::BF16.round(&mut w);
        // bf16 has 7: 1 + 2^-8 is a tie and rounds to the even 1, 1 + 2^-6 is kept.
        assert_eq!(w, vec![1.0, 3.0, 1.0 + 1.0 / 64.0]);
        let mut again = w.clone();
        WeightDType::BF16.round(&mut again);
        assert_eq!(again, w);
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for d in [WeightDType::F32, WeightDType::F16, WeightDType::BF16] {
            assert_eq!(d.to_string().parse::<WeightDType>().unwrap(), d);
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        assert!("f8".parse::<WeightDType>().unwrap_err().contains("f32, f16 or bf16"));
    }
}
