//! amad: Attention Map Alignment Distillation for image-captioning transformers, with every
//! forward and backward pass in hand-written WGSL compute shaders on wgpu.

// On the web wgpu's handles are !Send (one thread per worker), so an Arc of them is "not Send"
// there; natively the same Arcs are shared across threads. One code path serves both.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod data;
pub mod distill;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod half;
pub mod model;
pub mod ops;
pub mod reference;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{Gpu, Step, Tensor};
#[cfg(target_arch = "wasm32")]
pub mod web;
