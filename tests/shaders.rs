//! Every shader family parses and validates with naga, and every kernel's entry point exists.

use amad::ops::{shader_source, KERNELS, SHADERS};

fn validate(name: &str) -> naga::Module {
    let src = shader_source(name);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not parse:\n{}", e.emit_to_string(&src)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
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
    for (name, _) in SHADERS {
        let module = validate(name);
        let entries: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        for k in KERNELS.iter().filter(|k| k.family == *name) {
            assert!(
                entries.contains(&k.entry),
                "{}: no entry point {} in {name}.wgsl",
                k.name,
                k.entry
            );
        }
        for e in &entries {
            assert!(
                KERNELS.iter().any(|k| k.family == *name && k.entry == *e),
                "{name}.wgsl: entry point {e} has no launcher"
            );
        }
    }
}
