//! The step recorder: every dispatch, copy and clear of a step goes into one command encoder,
//! submitted once by [`Step::submit`]. Kernel parameters are packed into pooled uniform chunks,
//! written with one `write_buffer` per chunk just before the submission.

use super::image::Rows;
use super::DType;
use super::{Access, Gpu, Image, Kernel, Tensor};
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Bytes in one uniform chunk; each dispatch takes one aligned slot of it.
const CHUNK: u64 = 64 * 1024;
/// Largest parameter block a kernel may take.
const MAX_PARAMS: u64 = 256;

#[derive(Default)]
pub(super) struct UniformPool {
    free: Mutex<Vec<wgpu::Buffer>>,
}

struct Chunk {
    buffer: wgpu::Buffer,
    data: Vec<u8>,
}

/// Work recorded for one submission.
pub struct Step<'g> {
    gpu: &'g Gpu,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    chunks: Vec<Chunk>,
    align: u64,
    /// This step's id in the buffer pool (see `tensor`'s note on threads).
    id: u64,
    /// Whether the device is profiling: each dispatch is then submitted and timed on its own.
    profiling: bool,
}

impl<'g> Step<'g> {
    pub(super) fn new(gpu: &'g Gpu) -> Step<'g> {
        let align = (gpu.limits.min_uniform_buffer_offset_alignment as u64).max(MAX_PARAMS);
        Step {
            gpu,
            encoder: Some(gpu.device.create_command_encoder(&Default::default())),
            pass: None,
            chunks: Vec::new(),
            align,
            id: gpu.pool.open_step(),
            profiling: gpu.profile.lock().unwrap().is_some(),
        }
    }

    /// The device this step records for.
    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// The encoder for copy commands: closes the open compute pass first.
    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.as_mut().expect("encoder present until submit")
    }

    /// Places a parameter block; returns (chunk index, offset).
    fn place_params(&mut self, bytes: &[u8]) -> (usize, u64) {
        let need_new = match self.chunks.last() {
            None => true,
            Some(c) => c.data.len() as u64 + self.align > CHUNK,
        };
        if need_new {
            let reused = self.gpu.uniforms.free.lock().unwrap().pop();
            let buffer = reused.unwrap_or_else(|| {
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: CHUNK,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            self.chunks.push(Chunk {
                buffer,
                data: Vec::with_capacity(CHUNK as usize),
            });
        }
        let idx = self.chunks.len() - 1;
        let c = &mut self.chunks[idx];
        let off = c.data.len() as u64;
        c.data.extend_from_slice(bytes);
        c.data.resize((off + self.align) as usize, 0);
        (idx, off)
    }

    /// Records one dispatch of `kernel` with `params` (binding 0) and `tensors` (bindings 1..).
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        tensors: &[&Tensor],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        self.dispatch_images(kernel, params, tensors, &[], groups)
    }

    /// [`Step::dispatch`] for kernels that also read images: their bindings follow the tensors'.
    fn dispatch_images<P: bytemuck::Pod>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        tensors: &[&Tensor],
        images: &[&Image],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let n_images = kernel.bindings.iter().filter(|a| a.is_image()).count();
        if tensors.len() + n_images != kernel.bindings.len() || images.len() != n_images {
            return Err(Error::Invalid(format!(
                "kernel {} takes {} buffers and {n_images} images, got {} and {}",
                kernel.entry,
                kernel.bindings.len() - n_images,
                tensors.len(),
                images.len()
            )));
        }
        // f16 tensors go only to the bindings that read them as such, and only they go there:
        // any other kernel would read their bits as f32s.
        for (i, (a, t)) in kernel.bindings.iter().zip(tensors).enumerate() {
            if (*a == Access::Half) != (t.dtype() == DType::F16) {
                return Err(Error::Invalid(format!(
                    "kernel {}: buffer {i} is {:?}, where it takes {}; half-precision weights \
                     serve captioning and a distillation's teacher, which only read them in \
                     products",
                    kernel.entry,
                    t.dtype(),
                    if *a == Access::Half {
                        "f16"
                    } else {
                        "f32 or u32"
                    }
                )));
            }
        }
        // Likewise images of f16 tensors (rgba16float) and the bindings that read them.
        for (i, (a, im)) in kernel
            .bindings
            .iter()
            .filter(|a| a.is_image())
            .zip(images)
            .enumerate()
        {
            let half = im.format() == super::image::format_of(DType::F16);
            if (*a == Access::HalfImage) != half {
                return Err(Error::Invalid(format!(
                    "kernel {}: image {i} is {:?}, where it takes {}",
                    kernel.entry,
                    im.format(),
                    if half { "rgba32float" } else { "rgba16float" }
                )));
            }
        }
        // A buffer written by a dispatch may not share elements with another of its bindings
        // (WebGPU forbids writable aliasing), nor be bound read-only beside (wgpu counts that as
        // conflicting usages of one buffer); parts of one buffer may be written side by side.
        // Catch it here with a message instead of a validation error.
        for (i, (a, t)) in kernel.bindings.iter().zip(tensors).enumerate() {
            if *a == Access::ReadWrite
                && tensors
                    .iter()
                    .zip(kernel.bindings)
                    .enumerate()
                    .any(|(j, (u, b))| {
                        j != i
                            && (u.overlaps(t)
                                || (matches!(b, Access::Read | Access::Half) && u.same_buffer(t)))
                    })
            {
                return Err(Error::Invalid(format!(
                    "kernel {}: output buffer {i} is also bound as another argument",
                    kernel.entry
                )));
            }
        }
        let bytes = bytemuck::bytes_of(params);
        debug_assert!(
            bytes.len() as u64 <= MAX_PARAMS,
            "parameter block too large"
        );
        let (ci, off) = self.place_params(bytes);
        let built = self.gpu.pipeline(kernel);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.chunks[ci].buffer,
                offset: off,
                size: wgpu::BufferSize::new(bytes.len() as u64),
            }),
        }];
        for (i, t) in tensors.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: t.binding(),
            });
        }
        for (i, im) in images.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: (tensors.len() + i) as u32 + 1,
                resource: wgpu::BindingResource::TextureView(im.view()),
            });
        }
        let bind_group = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry),
                layout: &built.layout,
                entries: &entries,
            });
        if self.pass.is_none() {
            let enc = self.encoder.as_mut().expect("encoder present until submit");
            self.pass = Some(
                enc.begin_compute_pass(&Default::default())
                    .forget_lifetime(),
            );
        }
        let pass = self.pass.as_mut().unwrap();
        pass.set_pipeline(&built.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        if self.profiling {
            self.time_dispatch(kernel.entry)?;
        }
        Ok(())
    }

    /// Profiling: submits what is recorded so far, waits for it, and charges the time to `entry`.
    /// Work recorded before this dispatch was flushed by the previous one, except copies and
    /// clears recorded in between, which are charged here.
    #[cfg(not(target_arch = "wasm32"))]
    fn time_dispatch(&mut self, entry: &'static str) -> Result<()> {
        let t = std::time::Instant::now();
        self.flush();
        self.gpu.wait_idle()?;
        let secs = t.elapsed().as_secs_f64();
        if let Some(p) = self.gpu.profile.lock().unwrap().as_mut() {
            let e = p.entry(entry).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += secs;
        }
        self.encoder = Some(self.gpu.device.create_command_encoder(&Default::default()));
        Ok(())
    }

    #[cfg(target_arch = "wasm32")]
    fn time_dispatch(&mut self, _entry: &'static str) -> Result<()> {
        Ok(())
    }

    /// Dispatches `groups` workgroups laid out in 2D when over the per-dimension limit.
    pub fn dispatch_linear<P: bytemuck::Pod>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        tensors: &[&Tensor],
        groups: u64,
    ) -> Result<()> {
        self.dispatch_linear_images(kernel, params, tensors, &[], groups)
    }

    /// [`Step::dispatch_linear`] for kernels that also read images.
    pub fn dispatch_linear_images<P: bytemuck::Pod>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        tensors: &[&Tensor],
        images: &[&Image],
        groups: u64,
    ) -> Result<()> {
        let (x, y) = self.gpu.grid(kernel.entry, groups)?;
        self.dispatch_images(kernel, params, tensors, images, (x, y, 1))
    }

    /// Copies `rows` of `t` into a pooled image, in recording order (see [`Image`]).
    pub fn image(&mut self, t: &Tensor, rows: &Rows) -> Result<Image> {
        rows.check(self.gpu, t)?;
        let size = (rows.width as u32, rows.height as u32);
        let image = Image::alloc(self.gpu, size, super::image::format_of(t.dtype()), self.id);
        let elem = t.dtype().size();
        self.encoder().copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: t.buffer(),
                layout: wgpu::TexelCopyBufferLayout {
                    offset: t.offset() + rows.off as u64 * elem,
                    bytes_per_row: Some(rows.pitch as u32 * elem as u32),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: image.texture(),
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: size.0,
                height: size.1,
                depth_or_array_layers: 1,
            },
        );
        Ok(image)
    }

    /// The image of `rows` of `t` held for it (see [`Gpu::hold_images`]), made now if this is its
    /// first use; `None` where `t` is not held (or no hold is on), or its rows do not fit an image.
    pub fn held_image(&mut self, t: &Tensor, rows: &Rows) -> Result<Option<Arc<Image>>> {
        let gpu = self.gpu;
        let mut guard = gpu.held.lock().unwrap();
        let Some(held) = guard.as_mut().filter(|h| h.holds(t)) else {
            return Ok(None);
        };
        if let Some(image) = held.get(t, rows) {
            return Ok(Some(image));
        }
        if rows.check(gpu, t).is_err() {
            return Ok(None);
        }
        let image = Arc::new(self.image(t, rows)?);
        held.insert(t, rows, image.clone());
        Ok(Some(image))
    }

    /// Images of whole rows of each of `ts`, read as rows of `cols` elements (one texel per four),
    /// when the device reads operands from images ([`Gpu::image_operands`]) and every tensor's rows
    /// fit one ([`Rows::check`]); all are checked before any is copied. `None` sends the caller to
    /// its buffer kernel.
    pub fn operand_images(
        &mut self,
        ts: &[&Tensor],
        cols: usize,
    ) -> Result<Option<Vec<Arc<Image>>>> {
        if !self.gpu.image_operands() || cols == 0 || !cols.is_multiple_of(4) {
            return Ok(None);
        }
        let rows = |t: &Tensor| Rows {
            off: 0,
            pitch: cols,
            width: cols / 4,
            height: t.numel() / cols,
        };
        if ts.iter().any(|t| rows(t).check(self.gpu, t).is_err()) {
            return Ok(None);
        }
        ts.iter()
            .map(|t| match self.held_image(t, &rows(t))? {
                Some(held) => Ok(held),
                None => self.image(t, &rows(t)).map(Arc::new),
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// A new f32 tensor with undefined contents (every kernel that writes one fills all of it).
    pub fn empty(&mut self, shape: &[usize]) -> Result<Tensor> {
        Tensor::alloc(self.gpu, shape, DType::F32, self.id)
    }

    /// A new f32 tensor of zeros (cleared by an encoder command, in order).
    pub fn zeros(&mut self, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::alloc(self.gpu, shape, DType::F32, self.id)?;
        self.clear(&t);
        Ok(t)
    }

    /// Zeroes a tensor, in recording order.
    pub fn clear(&mut self, t: &Tensor) {
        let size = t.bytes();
        self.encoder()
            .clear_buffer(t.buffer(), t.offset(), Some(size));
    }

    /// Copies all of `src` into `dst` from element `at` on, in recording order.
    pub fn copy_into(&mut self, src: &Tensor, dst: &Tensor, at: usize) -> Result<()> {
        self.copy_range(src, 0, src.numel(), dst, at)
    }

    /// Copies `n` elements of `src` from element `from` into `dst` from element `at`, in
    /// recording order.
    pub fn copy_range(
        &mut self,
        src: &Tensor,
        from: usize,
        n: usize,
        dst: &Tensor,
        at: usize,
    ) -> Result<()> {
        if src.dtype() != dst.dtype() || from + n > src.numel() || at + n > dst.numel() {
            return Err(Error::Shape {
                op: "copy",
                msg: format!(
                    "elements {from}..{} of {:?} {:?} do not fit in {:?} {:?} at element {at}",
                    from + n,
                    src.dtype(),
                    src.shape(),
                    dst.dtype(),
                    dst.shape()
                ),
            });
        }
        // Every dtype is 4 bytes wide, as Tensor::bytes assumes.
        self.encoder().copy_buffer_to_buffer(
            src.buffer(),
            src.offset() + from as u64 * 4,
            dst.buffer(),
            dst.offset() + at as u64 * 4,
            n as u64 * 4,
        );
        Ok(())
    }

    /// Uploads data inside the step: staged into a fresh mapped buffer and copied in order.
    pub fn upload(&mut self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_bytes(shape, bytemuck::cast_slice(data), DType::F32)
    }

    /// Uploads u32 data (token ids) inside the step.
    pub fn upload_u32(&mut self, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        self.upload_bytes(shape, bytemuck::cast_slice(data), DType::U32)
    }

    fn upload_bytes(&mut self, shape: &[usize], bytes: &[u8], dtype: DType) -> Result<Tensor> {
        let t = Tensor::alloc(self.gpu, shape, dtype, self.id)?;
        if t.bytes() != bytes.len() as u64 {
            return Err(Error::Shape {
                op: "upload",
                msg: format!(
                    "shape {shape:?} needs {} elements, got {}",
                    t.numel(),
                    bytes.len() / 4
                ),
            });
        }
        use wgpu::util::DeviceExt;
        let staging = self
            .gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("upload"),
                contents: bytes,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        self.encoder()
            .copy_buffer_to_buffer(&staging, 0, t.buffer(), 0, bytes.len() as u64);
        Ok(t)
    }

    /// Closes the pass, writes the parameter chunks and submits what is recorded, leaving no
    /// encoder (profiling opens a new one).
    fn flush(&mut self) {
        self.pass = None;
        let encoder = self.encoder.take().expect("encoder present until submit");
        for c in &self.chunks {
            self.gpu.queue.write_buffer(&c.buffer, 0, &c.data);
        }
        self.gpu.queue.submit([encoder.finish()]);
    }

    /// Writes the parameter chunks, submits the one command buffer, and reports any GPU error.
    pub fn submit(mut self) -> Result<()> {
        self.flush();
        self.gpu.pool.close_step(self.id);
        self.gpu.check()
    }
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.pass = None;
        self.gpu.pool.close_step(self.id);
        // Chunks go back to the pool; a later write_buffer into one is ordered after this
        // step's submission on the queue timeline.
        let mut free = self.gpu.uniforms.free.lock().unwrap();
        free.extend(self.chunks.drain(..).map(|c| c.buffer));
    }
}
