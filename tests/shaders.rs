//! Every shader family parses and validates with naga, and every kernel's entry point exists.

use amad::ops::{kernels, shader_source, EXTENDS, HALF, SHADERS};

fn validate(name: &str) -> naga::Module {
    let src = shader_source(name);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not parse:\n{}", e.emit_to_string(&src)));
    // Only the families that extend another (and their f16 twins) may use subgroup operations
    // (the device opens with them only where the adapter has them).
    let base = HALF
        .iter()
        .find(|(f, _, _)| *f == name)
        .map_or(name, |(_, b, _)| b);
    let subgroups = EXTENDS.iter().any(|(f, _)| *f == base);
    // unpack2x16float (the families that read f16 weights) is core WGSL; naga asks for the
    // capability that wgpu grants every WebGPU-compliant device (DownlevelFlags::SHADER_F16_IN_F32).
    let mut caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    if subgroups {
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not validate:\n{}", e.emit_to_string(&src)));
    module
}

#[test]
fn every_shader_parses_and_validates() {
    for (name, _) in SHADERS {
        validate(name);
    }
}

#[test]
fn every_half_weights_family_validates_with_its_bases_entry_points() {
    for (half, base, _) in HALF {
        let names = |m: naga::Module| -> Vec<String> {
            m.entry_points.into_iter().map(|e| e.name).collect()
        };
        assert_eq!(names(validate(half)), names(validate(base)), "{half}");
        assert!(shader_source(half).contains("unpack2x16float"), "{half}");
    }
}

#[test]
fn every_kernel_entry_point_exists_and_every_entry_point_is_used() {
    let kernels = kernels();
    for (name, _) in SHADERS {
        let module = validate(name);
        let entries: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        for k in kernels.iter().filter(|k| k.family == *name) {
            assert!(
                entries.contains(&k.entry),
                "{}: no entry point {} in {name}.wgsl",
                k.name,
                k.entry
            );
        }
        // A family that extends another has that family's entry points too.
        let base = EXTENDS.iter().find(|(f, _)| f == name).map(|(_, b)| *b);
        for e in &entries {
            assert!(
                kernels
                    .iter()
                    .any(|k| (k.family == *name || Some(k.family) == base) && k.entry == *e),
                "{name}.wgsl: entry point {e} has no launcher"
            );
        }
    }
}
