//! Evaluation: whether captions are true of their scenes (metrics of wording come next).

pub mod truth;
