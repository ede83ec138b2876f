//! Distillation: the attention-alignment losses on files (`amad loss`), and (next) the layer
//! pairing and total loss of a distillation step.

pub mod maps_file;
