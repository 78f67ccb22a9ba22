// Scores one catalog segment against up to 8 queries per invocation:
// s = u . e_i + bias[i], written to the chunk's score scratch.
// Prefixed by params.wgsl and catalog_f32.wgsl or catalog_f16.wgsl.
//
// The dot product is one fma chain in dimension order from +0, then + bias:
// bit-identical to the CPU kernels (core/src/kernels/simd.rs, dot_with) in
// the rounding mode the device's fma has (probe_fma.wgsl).
// Each invocation loops d times only (lavapipe ends loops silently after
// 65,535 iterations per invocation).

@group(0) @binding(2) var<storage, read> bias: array<f32>;
// Queries for this pass, 8 per group: [group][dd][8] as two vec4 per dd.
// A uniform buffer: every invocation reads the same address.
@group(0) @binding(3) var<uniform> queries: array<vec4<f32>, 4096>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(64)
fn score(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.seg_rows) {
        return;
    }
    let qg = gid.y;
    let group = r >> 6u;
    let lane = r & 63u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    for (var dd = 0u; dd < p.d; dd++) {
        let e = vec4<f32>(load_e(group, dd, lane));
        let at = (qg * p.d + dd) * 2u;
        acc0 = fma(queries[at], e, acc0);
        acc1 = fma(queries[at + 1u], e, acc1);
    }
    let b = vec4<f32>(bias[r]);
    acc0 = acc0 + b;
    acc1 = acc1 + b;
    let out = p.seg_row0 + r;
    for (var i = 0u; i < 4u; i++) {
        let q = qg * 8u + i;
        if (q < p.n_queries) {
            scores[q * p.chunk_rows + out] = acc0[i];
        }
        if (q + 4u < p.n_queries) {
            scores[(q + 4u) * p.chunk_rows + out] = acc1[i];
        }
    }
}
