//! Images: a tensor's rows copied into a pooled rgba32float texture, for kernels that read their
//! operands as textures.
//!
//! Why: lavapipe (Mesa 22.3) loads from a storage buffer one invocation and one component at a
//! time, each behind a bounds-check branch, so a vec4 load costs 32 scalar loads for the 8
//! invocations of a SIMD register, and the matmul spends most of its time loading. A texel fetch
//! from a texture is one vectorised gather for all 8. The copy into the texture is a memcpy per
//! row, small beside the product that reads it (docs/perf-notes.md has the figures).
//!
//! The textures are bound as read-only storage textures (`texture_storage_2d<rgba32float, read>`)
//! rather than sampled ones: the same `textureLoad`, but lavapipe's image path has no mip levels to
//! look up, and the matmul ran about 1.3 to 1.5 times as fast that way (docs/perf-notes.md).
//!
//! An image of a tensor is `height` rows of `width` texels (4 elements each): row y holds the
//! elements `off + y*pitch ..` `+ 4*width`. An f32 tensor's image is rgba32float, an f16 tensor's
//! (half-precision weights) rgba16float, copied as it is and widened as it is read. Images are
//! pooled by size and format like tensor buffers and obey the same reuse rule (see `tensor`'s
//! module note): one freed during recording is reused only in recording order.

use super::{tensor::BufferPool, DType, Gpu, Tensor};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// The texel format of an image of a tensor of `dtype`.
pub(super) fn format_of(dtype: DType) -> wgpu::TextureFormat {
    match dtype {
        DType::F16 => wgpu::TextureFormat::Rgba16Float,
        _ => wgpu::TextureFormat::Rgba32Float,
    }
}

/// A pooled texture holding a copy of a tensor's rows; returns to the pool when dropped.
pub struct Image {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    size: (u32, u32),
    format: wgpu::TextureFormat,
    pool: Weak<BufferPool>,
}

/// Where an image's rows lie in a tensor, in its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rows {
    pub off: usize,
    pub pitch: usize,
    /// Texels per row: 4 * width elements are copied from each row.
    pub width: usize,
    pub height: usize,
}

impl Rows {
    /// Whether these rows of `t` can be copied into an image on `gpu`: the copy needs 256-byte
    /// row pitches, a 16-byte aligned start, rows inside the tensor, and a texture within the
    /// device's size limit. The error says which does not hold.
    pub fn check(&self, gpu: &Gpu, t: &Tensor) -> Result<()> {
        let max = gpu.limits.max_texture_dimension_2d as usize;
        self.fits(max, t.offset(), t.numel(), t.dtype().size())
            .map_err(|why| Error::Shape {
                op: "image",
                msg: format!("{self:?} of tensor {:?}: {why}", t.shape()),
            })
    }

    /// `check` for a tensor of `numel` elements of `elem` bytes starting at byte `byte_offset` of
    /// its buffer, on a device whose images are at most `max_texture` texels a side: why not, if
    /// not.
    pub fn fits(
        &self,
        max_texture: usize,
        byte_offset: u64,
        numel: usize,
        elem: u64,
    ) -> std::result::Result<(), String> {
        let max = max_texture;
        let pitch_bytes = self.pitch * elem as usize;
        let start = byte_offset + self.off as u64 * elem;
        let texel = 4 * elem;
        let end = self.off + self.pitch * (self.height.max(1) - 1) + 4 * self.width;
        let why = if self.width == 0 || self.height == 0 {
            "empty image".to_string()
        } else if self.width > max || self.height > max {
            format!(
                "{} x {} texels is over max_texture_dimension_2d = {max}",
                self.width, self.height
            )
        } else if !pitch_bytes.is_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as usize) {
            format!("row pitch of {pitch_bytes} bytes is not a multiple of 256")
        } else if self.width * 4 > self.pitch {
            "rows overlap".to_string()
        } else if !start.is_multiple_of(texel) {
            format!("start at byte {start} is not aligned to a texel ({texel} bytes)")
        } else if end > numel {
            format!("rows end at element {end}, past the tensor's {numel}")
        } else {
            return Ok(());
        };
        Err(why)
    }
}

impl Image {
    /// A pooled image of `size` texels of `format` for step `step`.
    pub(super) fn alloc(
        gpu: &Gpu,
        size: (u32, u32),
        format: wgpu::TextureFormat,
        step: u64,
    ) -> Image {
        let (texture, view) = gpu
            .pool
            .take_image((size, format), step)
            .unwrap_or_else(|| {
                gpu.pool
                    .images_created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let texel = format.block_copy_size(None).unwrap_or(16) as u64;
                gpu.pool.image_bytes_created.fetch_add(
                    size.0 as u64 * size.1 as u64 * texel,
                    std::sync::atomic::Ordering::Relaxed,
                );
                let texture = gpu.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("image"),
                    size: wgpu::Extent3d {
                        width: size.0,
                        height: size.1,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format,
                    usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                let view = texture.create_view(&Default::default());
                (texture, view)
            });
        Image {
            texture,
            view,
            size,
            format,
            pool: Arc::downgrade(&gpu.pool),
        }
    }

    pub fn format(&self) -> wgpu::TextureFormat {
        self.format
    }

    pub(super) fn texture(&self) -> &wgpu::Texture {
        &self.texture
    }

    pub(super) fn view(&self) -> &wgpu::TextureView {
        &self.view
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let key = (self.size, self.format);
            pool.put_image(key, (self.texture.clone(), self.view.clone()));
        }
    }
}

/// Images kept while their tensors stay fixed (see [`Gpu::hold_images`]): the tensors (clones,
/// so that their buffers cannot return to the pool and be reused), and each image made of them,
/// by buffer, byte offset and rows.
#[derive(Default)]
pub(super) struct Held {
    tensors: Vec<Tensor>,
    images: HashMap<(usize, u64, Rows), Arc<Image>>,
}

impl Held {
    pub(super) fn new(tensors: &[Tensor]) -> Held {
        Held {
            tensors: tensors.to_vec(),
            images: HashMap::new(),
        }
    }

    /// Whether `t` lies in one of the held tensors' buffers.
    pub(super) fn holds(&self, t: &Tensor) -> bool {
        self.tensors.iter().any(|h| h.same_buffer(t))
    }

    pub(super) fn get(&self, t: &Tensor, rows: &Rows) -> Option<Arc<Image>> {
        self.images
            .get(&(t.buffer_key(), t.offset(), *rows))
            .cloned()
    }

    pub(super) fn len(&self) -> usize {
        self.images.len()
    }

    pub(super) fn insert(&mut self, t: &Tensor, rows: &Rows, image: Arc<Image>) {
        self.images
            .insert((t.buffer_key(), t.offset(), *rows), image);
    }
}

/// While alive, images of the held tensors are kept and reused (see [`Gpu::hold_images`]); when
/// dropped, they return to the pool.
pub struct HeldImages<'g> {
    gpu: &'g Gpu,
    /// Whether this guard started the hold (a nested one leaves the outer one's alone).
    outer: bool,
}

impl Gpu {
    /// Until the returned guard drops, a kernel that reads one of `tensors` from an image gets the
    /// image made at the tensor's first such use, kept (a product of a few rows reads its B so,
    /// in `matmul_rows_image`; attention its keys and values; LayerNorm its weights), on devices
    /// that read operands from images ([`Gpu::image_operands`]); elsewhere it does nothing. The
    /// caller promises that nothing writes `tensors` meanwhile: generation, whose weights are
    /// fixed and read once per token. Copying a weight into an image costs more than reading it,
    /// so only a weight read many times gains; the images cost their size in memory while held.
    pub fn hold_images(&self, tensors: &[Tensor]) -> HeldImages<'_> {
        let mut held = self.held.lock().unwrap();
        let outer = held.is_none() && self.image_operands();
        if outer {
            *held = Some(Held::new(tensors));
        }
        HeldImages { gpu: self, outer }
    }
}

impl HeldImages<'_> {
    /// Holds `t` too, a tensor made after the hold began that nothing will write while it lasts
    /// (generation's cross-attention keys and values, read at every token).
    pub fn also(&self, t: &Tensor) {
        if let Some(held) = self
            .gpu
            .held
            .lock()
            .unwrap()
            .as_mut()
            .filter(|_| self.outer)
        {
            held.tensors.push(t.clone());
        }
    }
}

impl Drop for HeldImages<'_> {
    fn drop(&mut self) {
        if self.outer {
            self.gpu.held.lock().unwrap().take();
        }
    }
}
