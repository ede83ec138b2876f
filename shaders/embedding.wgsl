// Embedding lookup and its backward (a scatter-add into the table's gradient).
// WGSL has no float atomics, so the backward is made deterministic instead: for each (token, col),
// only the first occurrence of a token id sums the gradients of every later occurrence and adds
// that sum to the table row. Cost O(tokens^2 * dim), fine for caption batches (hundreds of tokens).
// When the table has fewer rows than the batch has tokens (GPT-2's positions; a small vocabulary)
// embedding_bwd_rows is cheaper, O(rows * tokens * dim): one invocation per (row, col) sums the
// tokens with that id, in token order, so both add the same terms in the same order.
// Ids >= vocab (never valid) read as zero rows and contribute no gradient.
//
// Launcher: src/ops/embedding.rs.
// Reference: src/reference/mod.rs (embedding, embedding_bwd, vit_tokens).
// Tests: tests/embedding.rs.

struct Params {
    tokens: u32,
    dim: u32,
    vocab: u32,
    // embedding_fwd_rows: the table's first row (a block of a larger table's rows)
    first: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;

// forward
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// ---- half-precision section: the table in f32 (src/ops/mod.rs puts shaders/embedding_f16t.wgsl
// here instead for a token embedding held in f16) ----
@group(0) @binding(2) var<storage, read> table: array<f32>;

// Element i of the table.
fn table_at(i: u32) -> f32 {
    return table[i];
}
// ---- end of the half-precision section ----

@compute @workgroup_size(256)
fn embedding_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.tokens * p.dim) {
        return;
    }
    let t = i / p.dim;
    let c = i % p.dim;
    let id = ids[t];
    var v = 0.0;
    if (id < p.vocab) {
        v = table_at(id * p.dim + c);
    }
    out[i] = v;
}

// forward from one row block of a table too large for one binding: rows first .. first + vocab.
// Each block writes only the tokens whose ids it holds; `out` starts as zeros, so ids outside every
// block read as zero rows, as in embedding_fwd.
@compute @workgroup_size(256)
fn embedding_fwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.tokens * p.dim) {
        return;
    }
    let id = ids[i / p.dim];
    if (id >= p.first && id - p.first < p.vocab) {
        out[i] = table_at((id - p.first) * p.dim + i % p.dim);
    }
}

// backward: d table[id] += sum of d out over the tokens with that id
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>;

@compute @workgroup_size(256)
fn embedding_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.tokens * p.dim) {
        return;
    }
    let t = i / p.dim;
    let c = i % p.dim;
    let id = ids[t];
    if (id >= p.vocab) {
        return;
    }
    for (var u = 0u; u < t; u++) {
        if (ids[u] == id) {
            return; // an earlier token owns this id
        }
    }
    var sum = 0.0;
    for (var u = t; u < p.tokens; u++) {
        if (ids[u] == id) {
            sum += dout[u * p.dim + c];
        }
    }
    dtable[id * p.dim + c] += sum;
}

@compute @workgroup_size(256)
fn embedding_bwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.vocab * p.dim) {
        return;
    }
    let id = i / p.dim;
    let c = i % p.dim;
    var sum = 0.0;
    var found = false;
    for (var u = 0u; u < p.tokens; u++) {
        if (ids[u] == id) {
            sum += dout[u * p.dim + c];
            found = true;
        }
    }
    // A row no token uses is left as it is (adding 0 would turn a -0 into +0).
    if (found) {
        dtable[i] += sum;
    }
}

// ViT token assembly: out[b, t] = (t == 0 ? cls : patches[b, t - 1]) + pos[t]; t < tokens = N + 1.
// Uses Params as (tokens = batch·(N+1) rows, dim, vocab = N + 1 tokens per image).
@group(0) @binding(1) var<storage, read> patch_emb: array<f32>;   // [B, N, dim]
@group(0) @binding(2) var<storage, read> cls: array<f32>;         // [dim]
@group(0) @binding(3) var<storage, read> pos: array<f32>;         // [N + 1, dim]
@group(0) @binding(4) var<storage, read_write> tokens: array<f32>; // [B, N + 1, dim]

@compute @workgroup_size(256)
fn vit_tokens_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.tokens * p.dim) {
        return;
    }
    let c = i % p.dim;
    let row = i / p.dim;
    let t = row % p.vocab;
    let b = row / p.vocab;
    var v = cls[c];
    if (t > 0u) {
        v = patch_emb[(b * (p.vocab - 1u) + t - 1u) * p.dim + c];
    }
    tokens[i] = v + pos[t * p.dim + c];
}

// Backward to the patch embeddings (the CLS and position gradients are column sums of dtokens).
@group(0) @binding(1) var<storage, read> dtokens: array<f32>;      // [B, N + 1, dim]
@group(0) @binding(2) var<storage, read_write> dpatch: array<f32>; // [B, N, dim]

@compute @workgroup_size(256)
fn vit_tokens_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    let n = p.vocab - 1u;
    if (i >= (p.tokens / p.vocab) * n * p.dim) {
        return;
    }
    let c = i % p.dim;
    let row = i / p.dim;
    let b = row / n;
    let t = row % n + 1u;
    dpatch[i] = dtokens[(b * p.vocab + t) * p.dim + c];
}
