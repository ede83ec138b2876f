//! Evaluation: caption metrics as the COCO toolkit computes them, and whether captions are true
//! of their scenes.

pub mod metrics;
pub mod truth;
