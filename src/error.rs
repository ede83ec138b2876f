//! One error type for the whole crate. Every message says what was wrong and, where there is one,
//! what to do about it.

/// Result alias used throughout amad.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter could be found at all.
    #[error("no GPU adapter found ({0}). {hint}", hint = no_adapter_hint())]
    NoAdapter(String),
    /// An adapter exists but the device could not be opened.
    #[error("could not open the GPU device: {0}")]
    Device(String),
    /// The GPU device was lost (driver reset, tab backgrounded, out of memory...).
    #[error(
        "the GPU device was lost ({0}); create a new device and resume from the last checkpoint"
    )]
    DeviceLost(String),
    /// Shapes that do not fit the operation, caught before anything reaches wgpu.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A buffer that would exceed one of the device's limits.
    #[error("{what} needs {bytes} bytes, over this device's {limit_name} of {limit} bytes; use a smaller batch or model")]
    TooLarge {
        what: String,
        bytes: u64,
        limit_name: &'static str,
        limit: u64,
    },
    /// A dispatch that would exceed the device's workgroup-count limit in every dimension.
    #[error(
        "{op}: {groups} workgroups exceed this device's dispatch limit ({limit}² per dispatch)"
    )]
    TooManyWorkgroups {
        op: &'static str,
        groups: u64,
        limit: u32,
    },
    /// A validation or out-of-memory error reported by wgpu.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// Reading a buffer back to the CPU failed.
    #[error("reading a GPU buffer back failed: {0}")]
    Readback(String),
    /// Bad user input that is not a shape (a wrong argument, a malformed file...).
    #[error("{0}")]
    Invalid(String),
}

fn no_adapter_hint() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        "This page needs WebGPU: use a recent Chrome or Edge (113+), or Firefox/Safari with WebGPU enabled."
    } else if cfg!(target_os = "linux") {
        "Install a Vulkan driver; on a machine without a GPU install Mesa lavapipe \
         (Debian/Ubuntu: apt-get install mesa-vulkan-drivers)."
    } else {
        "Update your graphics driver (amad needs Vulkan, Metal or DirectX 12)."
    }
}

/// Shorthand for a shape error.
pub fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape {
        op,
        msg: msg.into(),
    })
}
