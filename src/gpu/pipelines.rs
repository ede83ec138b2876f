//! Compute pipelines, each built once per device and kept for its lifetime.

use super::Gpu;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// How a kernel binds one resource. Binding 0 of every kernel is its uniform parameter block;
/// storage buffers follow at bindings 1, 2, ... in the order listed, then images (read-only storage
/// textures read with `textureLoad`, see [`super::Image`]). `Half` is a read-only storage buffer
/// of f16 elements (a [`super::DType::F16`] tensor, read two to a word) and `HalfImage` an image
/// of one (rgba16float): only a binding declared so takes such a tensor or image, and it takes no
/// other (`Step` checks both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
    Image,
    Half,
    HalfImage,
}

impl Access {
    /// Whether the binding is an image.
    pub fn is_image(self) -> bool {
        matches!(self, Access::Image | Access::HalfImage)
    }
}

/// One entry point of one shader family, with its storage bindings.
#[derive(Debug)]
pub struct Kernel {
    /// Unique name: the pipeline cache key.
    pub name: &'static str,
    /// The shader family: `shaders/<family>.wgsl`.
    pub family: &'static str,
    pub entry: &'static str,
    pub bindings: &'static [Access],
    /// Values of the shader's pipeline-overridable constants.
    pub constants: &'static [(&'static str, f64)],
}

impl Kernel {
    /// A kernel without override constants, named after its entry point (unique across families).
    pub const fn new(
        family: &'static str,
        entry: &'static str,
        bindings: &'static [Access],
    ) -> Kernel {
        Kernel {
            name: entry,
            family,
            entry,
            bindings,
            constants: &[],
        }
    }

    /// A pipeline of `entry` with override constants, under its own `name`. Why kernels come in
    /// such variants: lavapipe runs both sides of every branch, masked, and a storage load or
    /// store in a masked branch still loops over the 8 lanes of a register, so a flag tested per
    /// element costs its loads even where it is off; a constant removes the branch at build time.
    pub const fn specialised(
        name: &'static str,
        family: &'static str,
        entry: &'static str,
        bindings: &'static [Access],
        constants: &'static [(&'static str, f64)],
    ) -> Kernel {
        Kernel {
            name,
            family,
            entry,
            bindings,
            constants,
        }
    }

    /// This kernel with further override constants whose values are known only at run time (the
    /// AMAD passes' head counts, which size their loops), made once per process (`interned`).
    pub fn with(&self, extra: &[(&'static str, u32)]) -> &'static Kernel {
        let values: Vec<String> = extra.iter().map(|(c, v)| format!("{c}={v}")).collect();
        interned(format!("{}[{}]", self.name, values.join(",")), |name| {
            let constants: Vec<(&'static str, f64)> = self
                .constants
                .iter()
                .copied()
                .chain(extra.iter().map(|&(c, v)| (c, v as f64)))
                .collect();
            Kernel {
                name,
                constants: Box::leak(constants.into_boxed_slice()),
                ..*self
            }
        })
    }

    /// This kernel built from another family with the same entry points (`family`: one whose
    /// source the ops assemble from this one's, such as matmul's with f16 weights) and with the
    /// bindings `halves` (indices into `bindings`) taking f16 tensors, or their images; made once
    /// per process (`interned`).
    pub fn in_family(&self, family: &'static str, halves: &[usize]) -> &'static Kernel {
        interned(format!("{}@{family}", self.name), |name| {
            let bindings: Vec<Access> = self
                .bindings
                .iter()
                .enumerate()
                .map(|(i, &a)| match (halves.contains(&i), a) {
                    (true, Access::Image) => Access::HalfImage,
                    (true, _) => Access::Half,
                    (false, a) => a,
                })
                .collect();
            Kernel {
                name,
                family,
                bindings: Box::leak(bindings.into_boxed_slice()),
                ..*self
            }
        })
    }
}

/// The kernel variant called `name`, made by `make` (given the name to keep) the first time it is
/// asked for and kept for the process's life: the `&'static Kernel` that pipelines are cached under
/// and dispatches take. A process meets a few (one per pair of head counts it aligns, one per
/// kernel that reads f16 weights).
fn interned(name: String, make: impl FnOnce(&'static str) -> Kernel) -> &'static Kernel {
    static INTERNED: Mutex<BTreeMap<String, &'static Kernel>> = Mutex::new(BTreeMap::new());
    let mut interned = INTERNED.lock().unwrap();
    if let Some(k) = interned.get(&name) {
        return k;
    }
    let kernel: &'static Kernel =
        Box::leak(Box::new(make(Box::leak(name.clone().into_boxed_str()))));
    interned.insert(name, kernel);
    kernel
}

pub(super) struct Built {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(super) struct Cache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    built: Mutex<HashMap<&'static str, std::sync::Arc<Built>>>,
}

impl Cache {
    pub(super) fn len(&self) -> usize {
        self.built.lock().unwrap().len()
    }
}

impl Gpu {
    /// The pipeline for a kernel, built on first use.
    pub(super) fn pipeline(&self, k: &Kernel) -> std::sync::Arc<Built> {
        if let Some(b) = self.pipelines.built.lock().unwrap().get(k.name) {
            return b.clone();
        }
        let module = {
            let mut modules = self.pipelines.modules.lock().unwrap();
            modules
                .entry(k.family)
                .or_insert_with(|| {
                    let src = crate::ops::shader_source(k.family);
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(k.family),
                            source: wgpu::ShaderSource::Wgsl(src.into()),
                        })
                })
                .clone()
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, a) in k.bindings.iter().enumerate() {
            let ty = match a {
                Access::Image | Access::HalfImage => wgpu::BindingType::StorageTexture {
                    access: wgpu::StorageTextureAccess::ReadOnly,
                    format: super::image::format_of(match a {
                        Access::HalfImage => super::DType::F16,
                        _ => super::DType::F32,
                    }),
                    view_dimension: wgpu::TextureViewDimension::D2,
                },
                _ => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *a != Access::ReadWrite,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            };
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty,
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(k.entry),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(k.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.name),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(k.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: k.constants,
                    ..Default::default()
                },
                cache: None,
            });
        let built = std::sync::Arc::new(Built { pipeline, layout });
        self.pipelines
            .built
            .lock()
            .unwrap()
            .insert(k.name, built.clone());
        built
    }
}

#[cfg(test)]
mod tests {
    use super::Kernel;

    #[test]
    fn run_time_variants_are_made_once_each() {
        const K: Kernel = Kernel::new("family", "entry", &[]);
        let a = K.with(&[("N", 3)]);
        assert!(std::ptr::eq(a, K.with(&[("N", 3)])));
        assert!(!std::ptr::eq(a, K.with(&[("N", 4)])));
        assert_eq!(
            (a.name, a.entry, a.family),
            ("entry[N=3]", "entry", "family")
        );
        assert_eq!(a.constants, [("N", 3.0)]);
    }

    #[test]
    fn family_variants_are_made_once_each_with_their_half_bindings() {
        use super::Access::{Half, HalfImage, Image, Read, ReadWrite};
        const K: Kernel = Kernel::new("family", "entry", &[Read, Read, ReadWrite, Image, Image]);
        let a = K.in_family("family_f16", &[1, 4]);
        assert!(std::ptr::eq(a, K.in_family("family_f16", &[1, 4])));
        assert_eq!(
            (a.name, a.entry, a.family),
            ("entry@family_f16", "entry", "family_f16")
        );
        assert_eq!(a.bindings, [Read, Half, ReadWrite, Image, HalfImage]);
    }
}
