//! amad: Attention Map Alignment Distillation for image-captioning transformers, with every
//! forward and backward pass in hand-written WGSL compute shaders on wgpu.

pub mod error;
pub mod gpu;
pub mod ops;
pub mod reference;

pub use error::{Error, Result};
pub use gpu::{Gpu, Step, Tensor};
