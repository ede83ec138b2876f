//! Distillation: the attention-alignment losses on files (`amad loss`), layer pairing and the
//! total loss of a distillation step (step.rs), its memory (memory.rs), and students that start
//! from their teacher (init.rs).

pub mod init;
pub mod maps_file;
pub mod memory;
pub mod step;

pub use step::{
    distill_grads, distill_step, layer_pairs, Batch, DistillConfig, Kind, Kinds, LayerMap,
    DEFAULT_METHOD, DEFAULT_SEED, DEFAULT_TAU,
};
