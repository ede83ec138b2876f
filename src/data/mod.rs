//! Data: image loading (more to come: the scene generator and the vocabulary).

pub mod image;
