// Projection (SPEC step 5): z = P h + p, one invocation per output.
// Same fma chain as core/src/kernels/heads.rs.

struct ProjParams {
    d_out: u32,
    d_in: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> pp: ProjParams;
@group(0) @binding(1) var<storage, read> weight: array<f32>; // [d_out, d_in]
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> h: array<f32>;
@group(0) @binding(4) var<storage, read_write> z: array<f32>;

@compute @workgroup_size(64)
fn project(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= pp.d_out) {
        return;
    }
    var acc = 0.0;
    for (var c = 0u; c < pp.d_in; c++) {
        acc = fma(weight[j * pp.d_in + c], h[c], acc);
    }
    z[j] = acc + bias[j];
}
