//! Tensors: a pooled GPU buffer plus a shape. Buffers return to the pool when the last handle
//! drops, so a training loop allocates nothing after its first step.
//!
//! Reuse is safe in recording order: a buffer freed during recording may be handed out again for a
//! later dispatch in the same encoder, because wgpu orders dispatches that touch the same buffer.
//! For the same reason every write into a pooled buffer is an encoder command (copy or clear),
//! never `Queue::write_buffer`, which would jump ahead of commands not yet submitted.
//!
//! Steps recorded at once on several threads (tests share one device) need one more rule: a
//! buffer freed while steps are open may still be read by one of them, so no other step may
//! reuse it (and submit first, overwriting it) until every step open at the time has been
//! submitted or dropped. The step that freed it may keep reusing it in order.

use super::Gpu;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Element type of a tensor. Everything computed is f32; token ids and indices are u32; F16
/// holds the weights of a model loaded in half precision (`Precision::HalfWeights`), two to a
/// 32-bit word, which only the kernels that bind them as such read ([`crate::gpu::Access::Half`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A free pooled resource (buffer or image), with the newest step open when it was freed
/// (`None`: none was open).
struct Free<R> {
    resource: R,
    open_at_free: Option<u64>,
}

/// Free resources by size class.
struct FreeLists<K, R>(Mutex<HashMap<K, Vec<Free<R>>>>);

impl<K, R> Default for FreeLists<K, R> {
    fn default() -> Self {
        FreeLists(Mutex::new(HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq, R> FreeLists<K, R> {
    fn put(&self, key: K, resource: R, open_at_free: Option<u64>) {
        self.0.lock().unwrap().entry(key).or_default().push(Free {
            resource,
            open_at_free,
        });
    }

    /// A free resource of class `key` that step `step` may use: one freed while no other step
    /// that is still open was open.
    fn take(&self, key: &K, open: &std::collections::BTreeSet<u64>, step: u64) -> Option<R> {
        let mut free = self.0.lock().unwrap();
        let v = free.get_mut(key)?;
        let usable = v.iter().rposition(|f| {
            f.open_at_free
                .is_none_or(|last| open.range(..=last).all(|&id| id == step))
        })?;
        Some(v.swap_remove(usable).resource)
    }
}

/// An image's size in texels and its format.
pub(super) type ImageKey = ((u32, u32), wgpu::TextureFormat);

#[derive(Default)]
pub(super) struct BufferPool {
    free: FreeLists<u64, wgpu::Buffer>,
    /// Free images (see `image`), by (width, height) in texels and format.
    images: FreeLists<ImageKey, (wgpu::Texture, wgpu::TextureView)>,
    /// Ids of the steps being recorded, and the next id.
    open: Mutex<std::collections::BTreeSet<u64>>,
    next_step: std::sync::atomic::AtomicU64,
    /// Buffers created for tensors so far (see `Gpu::stats`).
    pub(super) created: std::sync::atomic::AtomicU64,
    /// Images created so far (see `Gpu::stats`).
    pub(super) images_created: std::sync::atomic::AtomicU64,
    /// Bytes of the buffers and images created so far: the pool keeps all it made, so these are
    /// the device memory amad holds, bar the uniform chunks (see `Gpu::stats`).
    pub(super) bytes_created: std::sync::atomic::AtomicU64,
    pub(super) image_bytes_created: std::sync::atomic::AtomicU64,
}

impl BufferPool {
    /// Registers a step being recorded; returns its id.
    pub(super) fn open_step(&self) -> u64 {
        let id = self
            .next_step
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open.lock().unwrap().insert(id);
        id
    }

    /// The step was submitted or dropped.
    pub(super) fn close_step(&self, id: u64) {
        self.open.lock().unwrap().remove(&id);
    }

    /// A free resource of class `key` from `list` that step `step` may use (see the module note).
    fn take<K: std::hash::Hash + Eq, R>(
        &self,
        list: &FreeLists<K, R>,
        key: &K,
        step: u64,
    ) -> Option<R> {
        let open = self.open.lock().unwrap();
        list.take(key, &open, step)
    }

    /// Returns a resource to `list`, marked with the newest step open now, which it must wait for.
    fn put<K: std::hash::Hash + Eq, R>(&self, list: &FreeLists<K, R>, key: K, resource: R) {
        let newest_open = self.open.lock().unwrap().last().copied();
        list.put(key, resource, newest_open);
    }

    /// A free image of `key` (size and format) usable by step `step`, if any.
    pub(super) fn take_image(
        &self,
        key: ImageKey,
        step: u64,
    ) -> Option<(wgpu::Texture, wgpu::TextureView)> {
        self.take(&self.images, &key, step)
    }

    pub(super) fn put_image(&self, key: ImageKey, image: (wgpu::Texture, wgpu::TextureView)) {
        self.put(&self.images, key, image);
    }

    fn create(&self, gpu: &Gpu, size: u64, mapped_at_creation: bool) -> wgpu::Buffer {
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.bytes_created
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: USAGE,
            mapped_at_creation,
        })
    }
}

struct Pooled {
    buffer: wgpu::Buffer,
    bytes: u64,
    pool: Weak<BufferPool>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(&pool.free, self.bytes, self.buffer.clone());
        }
    }
}

/// A GPU tensor: row-major, contiguous. Cloning shares the buffer. A tensor has a buffer of its
/// own, or is a part of another tensor's ([`Tensor::part`]: a model's parameters live as parts of
/// a few large buffers, so that one dispatch updates them all).
#[derive(Clone)]
pub struct Tensor {
    inner: Arc<Pooled>,
    /// Byte offset in the buffer; bound as its own range when `part`.
    offset: u64,
    part: bool,
    shape: Vec<usize>,
    dtype: DType,
}

/// Usage flags every tensor buffer gets: bound as storage, copied in and out.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Pool size classes: 256-byte granularity keeps classes few while wasting little.
fn size_class(bytes: u64) -> u64 {
    bytes.div_ceil(256).max(1) * 256
}

impl Tensor {
    /// Checks an f32 shape before anything is allocated: no zero-sized dimension, within the
    /// limits. Returns its bytes.
    pub fn check_shape(gpu: &Gpu, shape: &[usize], what: &str) -> Result<u64> {
        Self::check_shape_of(gpu, shape, DType::F32, what)
    }

    /// [`Tensor::check_shape`] for elements of `dtype`; the bytes are rounded up to whole 32-bit
    /// words (an odd number of f16 elements leaves half a word).
    pub fn check_shape_of(gpu: &Gpu, shape: &[usize], dtype: DType, what: &str) -> Result<u64> {
        if shape.contains(&0) {
            return Err(Error::Shape {
                op: "tensor",
                msg: format!("{what}: zero-sized dimension in shape {shape:?}"),
            });
        }
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let bytes = numel
            .and_then(|n| n.checked_mul(dtype.size()))
            .map(|b| b.next_multiple_of(4))
            .ok_or_else(|| Error::Shape {
                op: "tensor",
                msg: format!("{what}: shape {shape:?} overflows"),
            })?;
        if bytes > gpu.max_binding() {
            return Err(Error::TooLarge {
                what: format!("{what} {shape:?}"),
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: gpu.max_binding(),
            });
        }
        Ok(bytes)
    }

    /// A tensor with undefined contents for step `step`, from the pool when a buffer of its size
    /// class is free and no other step open when it was freed is still open.
    pub(crate) fn alloc(gpu: &Gpu, shape: &[usize], dtype: DType, step: u64) -> Result<Tensor> {
        let bytes = size_class(Self::check_shape_of(gpu, shape, dtype, "tensor")?);
        let buffer = match gpu.pool.take(&gpu.pool.free, &bytes, step) {
            Some(b) => b,
            None => gpu.pool.create(gpu, bytes, false),
        };
        Ok(Self::pooled(gpu, buffer, bytes, shape, dtype))
    }

    /// Wraps a buffer of size class `bytes` so that it returns to `gpu`'s pool when dropped.
    fn pooled(
        gpu: &Gpu,
        buffer: wgpu::Buffer,
        bytes: u64,
        shape: &[usize],
        dtype: DType,
    ) -> Tensor {
        Tensor {
            inner: Arc::new(Pooled {
                buffer,
                bytes,
                pool: Arc::downgrade(&gpu.pool),
            }),
            offset: 0,
            part: false,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// The elements `at ..` of this tensor, seen as a tensor of `shape`, sharing its buffer. The
    /// part starts where the device allows a binding to start (min_storage_buffer_offset_alignment)
    /// and is bound as its own byte range (rounded up to 16 bytes, which whoever lays out parts
    /// leaves free), so parts of one buffer can be written by one dispatch each, or several at once.
    pub fn part(&self, gpu: &Gpu, at: usize, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let offset = self.offset + at as u64 * self.dtype.size();
        let align = gpu.limits.min_storage_buffer_offset_alignment as u64;
        if at + numel > self.numel() || !offset.is_multiple_of(align) {
            return Err(Error::Shape {
                op: "part",
                msg: format!(
                    "{shape:?} at element {at} does not fit in {:?} or is not aligned to {align} bytes",
                    self.shape
                ),
            });
        }
        Ok(Tensor {
            inner: self.inner.clone(),
            offset,
            part: true,
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// Uploads data outside any step. The buffer is new (never a pooled one a pending encoder might
    /// still read), created already holding the data; it joins the pool when dropped.
    pub fn from_slice(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Self::upload_new(
            gpu,
            shape,
            bytemuck::cast_slice(data),
            data.len(),
            DType::F32,
        )
    }

    /// Like [`Tensor::from_slice`] for f16 data, given as the bits of each element.
    pub fn from_f16_bits(gpu: &Gpu, shape: &[usize], bits: &[u16]) -> Result<Tensor> {
        Self::upload_new(
            gpu,
            shape,
            bytemuck::cast_slice(bits),
            bits.len(),
            DType::F16,
        )
    }

    /// Like [`Tensor::from_slice`] for u32 data (token ids, indices).
    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Self::upload_new(
            gpu,
            shape,
            bytemuck::cast_slice(data),
            data.len(),
            DType::U32,
        )
    }

    fn upload_new(
        gpu: &Gpu,
        shape: &[usize],
        bytes: &[u8],
        len: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let want = Self::check_shape_of(gpu, shape, dtype, "upload")?;
        let numel: usize = shape.iter().product();
        if numel != len {
            return Err(Error::Shape {
                op: "upload",
                msg: format!("shape {shape:?} needs {numel} elements, got {len}"),
            });
        }
        let size = size_class(want);
        let buffer = gpu.pool.create(gpu, size, true);
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| Error::Gpu(e.to_string()))?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buffer.unmap();
        Ok(Self::pooled(gpu, buffer, size, shape, dtype))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The bytes of its elements (for f16, rounded up to a whole 32-bit word).
    pub fn bytes(&self) -> u64 {
        (self.numel() as u64 * self.dtype.size()).next_multiple_of(4)
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.inner.buffer
    }
    /// Byte offset of the tensor's first element in [`Tensor::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The tensor as a storage binding: the whole buffer for a tensor of its own, the part's own
    /// byte range for a part.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        if !self.part {
            return self.inner.buffer.as_entire_binding();
        }
        let size = self
            .bytes()
            .next_multiple_of(16)
            .min(self.inner.bytes - self.offset);
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.inner.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(size),
        })
    }
    /// Identifies this tensor's buffer while it is alive (see `image::Held`).
    pub(super) fn buffer_key(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// True when both handles share one buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
    /// True when both share elements (the same buffer and overlapping byte ranges).
    pub fn overlaps(&self, other: &Tensor) -> bool {
        self.same_buffer(other)
            && self.offset < other.offset + other.bytes()
            && other.offset < self.offset + self.bytes()
    }

    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::Shape {
                op: "reshape",
                msg: format!("cannot view {:?} as {shape:?}", self.shape),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// Reads the tensor back as f32, f16 elements widened (async: on wasm it awaits the browser,
    /// natively it polls).
    pub async fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(gpu).await?;
        if self.dtype == DType::F16 {
            return Ok(bytes
                .chunks_exact(2)
                .take(self.numel())
                .map(|c| crate::half::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect());
        }
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Reads the tensor back as u32.
    pub async fn read_u32(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(gpu).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    async fn read_bytes(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        gpu.check()?;
        let size = self.bytes();
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(self.buffer(), self.offset, &staging, 0, size);
        gpu.queue.submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        rx.await
            .map_err(|_| Error::Readback("the map callback was dropped".into()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        gpu.check()?;
        let out = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Readback(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(out)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}
