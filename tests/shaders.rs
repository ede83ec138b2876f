//! Every shader family parses and validates with naga, and every kernel's entry point exists.

use amad::ops::{kernels, shader_source, EXTENDS, SHADERS};

fn validate(name: &str) -> naga::Module {
    let src = shader_source(name);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not parse:\n{}", e.emit_to_string(&src)));
    // Only the families that extend another may use subgroup operations (the device opens with
    // them only where the adapter has them).
    let subgroups = EXTENDS.iter().any(|(f, _)| *f == name);
    let caps = if subgroups {
        naga::valid::Capabilities::SUBGROUP
    } else {
        naga::valid::Capabilities::empty()
    };
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
