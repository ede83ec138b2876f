// Prepended to the families that use subgroup operations (matmul_subgroup, attention_subgroup),
// after the family they extend: helpers for kernels whose workgroup is one subgroup of 8 (or 16)
// invocations, each fetching different texels and handing them to the others with
// subgroupBroadcast (an extract and a splat on lavapipe, where they are the lanes of a register).

// Lanes 0-3's (4-7's) vectors as a matrix's columns.
fn lanes_0_3(v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
        subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}

fn lanes_4_7(v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
        subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}

fn lanes_8_11(v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(v, 8u), subgroupBroadcast(v, 9u),
        subgroupBroadcast(v, 10u), subgroupBroadcast(v, 11u));
}

fn lanes_12_15(v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(v, 12u), subgroupBroadcast(v, 13u),
        subgroupBroadcast(v, 14u), subgroupBroadcast(v, 15u));
}
