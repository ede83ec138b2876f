// Prepended to every shader family (see src/ops/mod.rs).

// Linear workgroup index. Launchers split counts over 65,535 into (x, y) with x = the
// per-dimension limit, so wid.x + wid.y * nwg.x enumerates them; kernels bound-check the result.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Linear invocation index for 1-D kernels with 256 invocations per workgroup.
fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return group_index(wid, nwg) * 256u + lid;
}
