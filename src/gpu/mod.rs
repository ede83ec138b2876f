//! The GPU runtime: one device, its limits, a buffer pool, pipelines built once, and a step
//! recorder that puts all of a step's work into one command encoder.
//!
//! Why this shape (see ARCHITECTURE.md): wgpu calls are cheap but not free, and on lavapipe and in
//! the browser every submission and every readback is a round trip. A training step is therefore
//! recorded into a single encoder and submitted once; only what the caller asks for is read back.

mod image;
mod pipelines;
mod step;
mod tensor;

pub use image::{HeldImages, Image, Rows};
pub use pipelines::{Access, Kernel};
pub use step::Step;
pub use tensor::{DType, Tensor};
/// The wgpu this crate is built on, for callers that pick backends or adapters.
pub use wgpu;

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Device-level failures recorded by wgpu callbacks, surfaced as `Result` errors at the next
/// submit or readback instead of wgpu's default panic.
#[derive(Default)]
struct Faults {
    error: Option<String>,
    lost: Option<String>,
}

/// See [`Gpu::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Buffers ever created for tensors (reused pool buffers are not counted again).
    pub tensor_buffers_created: u64,
    /// Images ever created for texture operands (see [`Image`]), likewise.
    pub images_created: u64,
    /// Images held now for fixed tensors (see [`Gpu::hold_images`]).
    pub images_held: usize,
    /// Bytes of the tensor buffers and of the images created so far: pooled, never given back,
    /// so the device memory they take.
    pub tensor_bytes: u64,
    pub image_bytes: u64,
    pub pipelines_built: usize,
}

/// An open GPU device with everything amad keeps per device.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pool: Arc<tensor::BufferPool>,
    pipelines: pipelines::Cache,
    uniforms: step::UniformPool,
    faults: Arc<Mutex<Faults>>,
    /// Per-kernel times while profiling (see [`Gpu::profile`]); `None` otherwise.
    profile: Mutex<Option<Profile>>,
    /// Whether matmuls read their operands from images (see [`Gpu::image_operands`]).
    image_operands: std::sync::atomic::AtomicBool,
    /// Whether image matmuls use the subgroup kernel where they can.
    subgroup_matmul: std::sync::atomic::AtomicBool,
    /// Whether buffer matmuls stage their tiles in workgroup memory (see [`Gpu::shared_matmul`]).
    shared_matmul: std::sync::atomic::AtomicBool,
    /// Whether long weight-gradient products split K (see [`Gpu::split_k`]).
    split_k: std::sync::atomic::AtomicBool,
    /// Images kept for fixed tensors, while a [`HeldImages`] guard lives.
    held: Mutex<Option<image::Held>>,
}

/// Whether to open a device with subgroup operations, which the subgroup matmul needs: natively,
/// where the adapter has them and all its subgroups hold the same 8 or 16 invocations, the
/// kernel's workgroup (lavapipe: the lanes of a 256- or 512-bit register). (In the browser, WGSL
/// needs `enable subgroups;`, which naga does not parse; images are for CPU adapters, and the
/// browser's own is far slower than the native one in any case.)
fn wants_subgroups(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    cfg!(not(target_arch = "wasm32"))
        && adapter.features().contains(wgpu::Features::SUBGROUP)
        && info.subgroup_min_size == info.subgroup_max_size
        && matches!(info.subgroup_min_size, 8 | 16)
}

/// Lavapipe (Mesa's CPU Vulkan driver) compiles shaders for 256-bit registers unless told
/// otherwise, even on CPUs with 512-bit ones. At 512 bits each instruction of the subgroup matmul
/// does twice the work for about the same time (ARCHITECTURE.md has the figures), so where the CPU
/// has AVX-512 and the environment does not say, amad asks for 512 before its first instance
/// loads the driver. LP_NATIVE_VECTOR_WIDTH=256 keeps Mesa's default.
#[cfg(not(target_arch = "wasm32"))]
fn widen_lavapipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("LP_NATIVE_VECTOR_WIDTH").is_none()
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            // Before any instance exists, so no driver thread reads the environment meanwhile.
            std::env::set_var("LP_NATIVE_VECTOR_WIDTH", "512");
        }
    });
}

/// Whether a new device's image matmuls use the subgroup kernel, where it can: yes, unless the
/// environment variable AMAD_SUBGROUP_MATMUL says `0`.
fn subgroup_matmul_default() -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    if std::env::var("AMAD_SUBGROUP_MATMUL").as_deref() == Ok("0") {
        return false;
    }
    true
}

/// Whether a new device's buffer matmuls stage their tiles in workgroup memory: only where the
/// environment variable AMAD_SHARED_MATMUL says `1` (see [`Gpu::shared_matmul`]).
fn shared_matmul_default() -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    if std::env::var("AMAD_SHARED_MATMUL").as_deref() == Ok("1") {
        return true;
    }
    false
}

/// Whether a new device reads matmul operands from images: natively on CPU adapters (see
/// [`Gpu::image_operands`]), unless the environment variable AMAD_IMAGE_OPERANDS says `0` (off)
/// or `1` (on); never in a browser.
fn image_operands_default(info: &wgpu::AdapterInfo) -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    match std::env::var("AMAD_IMAGE_OPERANDS").as_deref() {
        Ok("0") => return false,
        Ok("1") => return true,
        _ => {}
    }
    // A browser's CPU adapter is Chrome's SwiftShader, whose storage loads are not lavapipe's
    // loops over lanes: in headless Chromium on the 2-core EPYC, buffers captioned with the
    // full-size model in 24-29 s against 28-33 from images (two runs each, alternating), and
    // the page's tests distilled as fast or faster (20 steps 10.4 s against 12.7).
    info.device_type == wgpu::DeviceType::Cpu && !cfg!(target_arch = "wasm32")
}

/// A "Key:   N kB" line of a Linux /proc file (meminfo, self/status) in bytes, where the system
/// has the file and the line.
#[cfg(not(target_arch = "wasm32"))]
pub fn proc_bytes(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Wall time and dispatch count per kernel entry point, gathered while profiling.
pub type Profile = std::collections::BTreeMap<&'static str, (u64, f64)>;

impl Gpu {
    /// Opens the default adapter (high performance preference) with the adapter's own limits:
    /// WebGPU in the browser; natively any backend, or those named in WGPU_BACKEND.
    pub async fn new() -> Result<Gpu> {
        let backends = if cfg!(target_arch = "wasm32") {
            wgpu::Backends::BROWSER_WEBGPU
        } else {
            wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
        };
        Self::with_backends(backends).await
    }

    /// Like [`Gpu::new`], restricted to the given backends.
    pub async fn with_backends(backends: wgpu::Backends) -> Result<Gpu> {
        #[cfg(not(target_arch = "wasm32"))]
        widen_lavapipe();
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        Self::from_adapter(adapter).await
    }

    /// Opens a device on a given adapter, requesting the adapter's own limits rather than the
    /// WebGPU defaults (bigger storage bindings, more workgroup memory and invocations).
    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("amad"),
                required_features: if wants_subgroups(&adapter) {
                    wgpu::Features::SUBGROUP
                } else {
                    wgpu::Features::empty()
                },
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut f = f.lock().unwrap();
            if f.error.is_none() {
                f.error = Some(e.to_string());
            }
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, msg| {
            f.lock().unwrap().lost = Some(format!("{reason:?}: {msg}"));
        });
        Ok(Gpu {
            device,
            queue,
            limits,
            pool: Arc::new(tensor::BufferPool::default()),
            pipelines: pipelines::Cache::default(),
            uniforms: step::UniformPool::default(),
            faults,
            profile: Mutex::new(None),
            image_operands: image_operands_default(&info).into(),
            subgroup_matmul: subgroup_matmul_default().into(),
            shared_matmul: shared_matmul_default().into(),
            split_k: (info.device_type != wgpu::DeviceType::Cpu).into(),
            held: Mutex::new(None),
            info,
        })
    }

    /// One line naming the adapter, for logs and benchmark records. Browsers may withhold the
    /// adapter's name (wgpu then reports it empty); the line says so rather than print blanks.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let name = if i.name.is_empty() {
            "unnamed adapter"
        } else {
            &i.name
        };
        let mut line = format!("{name} ({:?}, {:?}", i.backend, i.device_type);
        if !i.driver.is_empty() || !i.driver_info.is_empty() {
            line += format!(", driver {} {}", i.driver, i.driver_info).trim_end();
        }
        line + ")"
    }

    /// Whether matmuls copy their operands into images and read them with texel fetches (see
    /// `image`): on by default on native CPU adapters (lavapipe), where that is about twice as
    /// fast as storage loads; off on GPUs, whose storage loads are fast and where the copies
    /// would only cost, and in browsers, whose CPU adapter (SwiftShader) ran faster on buffers.
    pub fn image_operands(&self) -> bool {
        self.image_operands
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns image operands on or off (tests and benchmarks compare both paths on one device).
    pub fn set_image_operands(&self, on: bool) {
        self.image_operands
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether image matmuls (see [`Gpu::image_operands`]) share each texel among the 8 or 16
    /// invocations of a subgroup (`matmul_subgroup` in shaders/matmul_subgroup.wgsl), and the
    /// attention products of long sequences likewise (shaders/attention_subgroup.wgsl): on devices
    /// whose subgroups hold 8 or 16 (see `wants_subgroups`), unless turned off. On lavapipe the
    /// invocations of a subgroup are the lanes of a SIMD register, and a texel fetch costs the same
    /// for 8 lanes fetching one texel as for 8 fetching eight, so fetching each once and
    /// broadcasting it saves most of the fetches.
    pub fn subgroup_matmul(&self) -> bool {
        // The device has subgroup operations only where `wants_subgroups` asked for them.
        self.device.features().contains(wgpu::Features::SUBGROUP)
            && self.image_operands()
            && self
                .subgroup_matmul
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Invocations per subgroup (8 or 16 where the subgroup matmul runs; see `wants_subgroups`).
    pub fn subgroup_lanes(&self) -> u32 {
        self.info.subgroup_min_size
    }

    /// Turns the subgroup matmul on or off (tests and benchmarks compare the kernels on one
    /// device); on has no effect on a device without subgroups.
    pub fn set_subgroup_matmul(&self, on: bool) {
        self.subgroup_matmul
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether matmuls that read storage buffers with vec4 loads stage each workgroup's tile of
    /// A and B in workgroup memory (`matmul_shared` in shaders/matmul.wgsl) instead of loading
    /// them per invocation from the caches (`matmul_vec4`): the usual GPU tiling, the same bits.
    /// Off unless AMAD_SHARED_MATMUL=1 or turned on: it has not yet been timed on a GPU, where it
    /// is for (`scripts/device_check.sh` times both), and on lavapipe images win anyway.
    pub fn shared_matmul(&self) -> bool {
        self.shared_matmul
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns the workgroup-memory matmul on or off (tests and benchmarks compare the kernels).
    pub fn set_shared_matmul(&self, on: bool) {
        self.shared_matmul
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether matmuls with few output tiles and a long K run as partial products over chunks of
    /// K, summed afterwards (split-K, in src/ops/matmul.rs): on GPUs, which a weight gradient's
    /// few tiles would leave mostly idle; off on CPU adapters, whose two or so threads the tiles
    /// keep busy, and where the partial products' extra stores and their sum cost more than the
    /// split gains (lavapipe here, alternating, medians of 7: 512 x 128 x 2080 4.7-6.4 ms
    /// unsplit against 7.8-8.4 split).
    pub fn split_k(&self) -> bool {
        self.split_k.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns split-K on or off (tests run the split on CPU adapters too).
    pub fn set_split_k(&self, on: bool) {
        self.split_k.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts for checking that steady-state work allocates nothing and builds nothing.
    pub fn stats(&self) -> Stats {
        Stats {
            tensor_buffers_created: self.pool.created.load(std::sync::atomic::Ordering::Relaxed),
            images_created: self
                .pool
                .images_created
                .load(std::sync::atomic::Ordering::Relaxed),
            images_held: self.held.lock().unwrap().as_ref().map_or(0, |h| h.len()),
            tensor_bytes: self
                .pool
                .bytes_created
                .load(std::sync::atomic::Ordering::Relaxed),
            image_bytes: self
                .pool
                .image_bytes_created
                .load(std::sync::atomic::Ordering::Relaxed),
            pipelines_built: self.pipelines.len(),
        }
    }

    /// Runs `work` with profiling on and returns each kernel's dispatch count and wall time. While
    /// profiling, every dispatch is submitted and waited for on its own, so the times are each
    /// kernel's own (plus a submission's overhead) and the whole runs slower than usual: a
    /// developer's breakdown, not a benchmark of the step.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self, work: impl FnOnce() -> Result<()>) -> Result<Profile> {
        *self.profile.lock().unwrap() = Some(Profile::new());
        let result = work();
        let profile = self.profile.lock().unwrap().take().unwrap_or_default();
        result.map(|()| profile)
    }

    /// Returns (and clears) the first GPU error recorded since the last check.
    pub fn check(&self) -> Result<()> {
        let mut f = self.faults.lock().unwrap();
        if let Some(l) = &f.lost {
            return Err(Error::DeviceLost(l.clone()));
        }
        match f.error.take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// Starts recording a step: all dispatches go into one command encoder.
    pub fn step(&self) -> Step<'_> {
        Step::new(self)
    }

    /// Blocks (natively) until the GPU is idle. On wasm this is a no-op: the browser drives it.
    pub fn wait_idle(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.check()
    }

    /// Memory known to be available to this device, in bytes: on a CPU adapter (natively, on
    /// Linux) the host's MemAvailable; None where neither wgpu nor WebGPU can say (GPUs).
    pub fn available_memory(&self) -> Option<u64> {
        if self.info.device_type != wgpu::DeviceType::Cpu {
            return None;
        }
        #[cfg(not(target_arch = "wasm32"))]
        return proc_bytes("/proc/meminfo", "MemAvailable:");
        #[cfg(target_arch = "wasm32")]
        None
    }

    /// Largest buffer this device can bind as storage.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Splits a linear workgroup count into (x, y) within the per-dimension limit; kernels
    /// recover the linear index as `wid.x + wid.y * nwg.x` and bound-check it.
    pub fn grid(&self, op: &'static str, groups: u64) -> Result<(u32, u32)> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups <= max as u64 {
            return Ok((groups.max(1) as u32, 1));
        }
        let y = groups.div_ceil(max as u64);
        if y > max as u64 {
            return Err(Error::TooManyWorkgroups {
                op,
                groups,
                limit: max,
            });
        }
        Ok((max, y as u32))
    }
}
