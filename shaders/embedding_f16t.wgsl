// ---- half-precision section: the table in f16, two elements to a 32-bit word (a token embedding
// held in half precision: `Precision::HalfWeights`, DType::F16) ----
//
// src/ops/mod.rs puts this in place of embedding.wgsl's f32 section to make the family
// embedding_f16t: the lookups read each element widened to f32, exactly, so they give the bits
// of a lookup in the table widened.
@group(0) @binding(2) var<storage, read> table: array<u32>;

// Element i of the table.
fn table_at(i: u32) -> f32 {
    return half_at(table[i / 2u], i);
}
// ---- end of the half-precision section ----
