// Fusion head (SPEC step 6): beta = sigmoid(W [z_b; z_s; z_b*z_s] + b),
// u = beta*z_b + (1-beta)*z_s. One invocation per output dimension; same
// fma chains as core/src/kernels/heads.rs.

struct FuseParams {
    d_r: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> fp: FuseParams;
@group(0) @binding(1) var<storage, read> weight: array<f32>; // [d_r, 3 d_r]
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> z_b: array<f32>;
@group(0) @binding(4) var<storage, read> z_s: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // [u; beta]

@compute @workgroup_size(64)
fn fuse(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let dr = fp.d_r;
    if (j >= dr) {
        return;
    }
    let row = j * 3u * dr;
    var acc = 0.0;
    for (var c = 0u; c < dr; c++) {
        acc = fma(weight[row + c], z_b[c], acc);
    }
    for (var c = 0u; c < dr; c++) {
        acc = fma(weight[row + dr + c], z_s[c], acc);
    }
    for (var c = 0u; c < dr; c++) {
        acc = fma(weight[row + 2u * dr + c], z_b[c] * z_s[c], acc);
    }
    let beta = 1.0 / (1.0 + exp(-(acc + bias[j])));
    out[j] = fma(beta, z_b[j], (1.0 - beta) * z_s[j]);
    out[dr + j] = beta;
}
