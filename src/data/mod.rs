//! Data: the procedural scenes and their captions, and image loading.

pub mod captions;
#[cfg(not(target_arch = "wasm32"))]
pub mod export;
pub mod image;
pub mod scenes;
