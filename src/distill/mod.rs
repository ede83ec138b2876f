//! Distillation: the attention-alignment losses on files (`amad loss`), layer pairing and the
//! total loss of a distillation step (step.rs), and its memory (memory.rs).

pub mod maps_file;
pub mod memory;
pub mod step;

pub use step::{
    distill_grads, distill_step, layer_pairs, Batch, DistillConfig, Kind, Kinds, LayerMap,
};
