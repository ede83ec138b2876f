//! The captioner: a ViT encoder and a GPT-2 decoder with cross-attention, in Hugging Face's
//! VisionEncoderDecoder layout. Teacher and student are two configs of the same code.

pub mod config;
pub mod weights;

pub use config::Config;
pub use weights::{Layout, Weights};
