// Gate of one view (SPEC step 1): logits l = G phi + b, keep the k largest
// (ties: lower expert index wins), softmax over them, 0 elsewhere.
// One workgroup, one invocation per expert (at most 256 experts). The
// summation order matches core/src/kernels/heads.rs exactly; only exp()
// may differ in the last bits.

struct GateParams {
    n_experts: u32,
    d_phi: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> gp: GateParams;
@group(0) @binding(1) var<storage, read> weight: array<f32>;  // [K, d_phi]
@group(0) @binding(2) var<storage, read> bias: array<f32>;    // [K]
@group(0) @binding(3) var<storage, read> phi: array<f32>;     // [d_phi]
@group(0) @binding(4) var<storage, read_write> scales: array<f32>; // [K]

var<workgroup> logits: array<f32, 256>;
var<workgroup> chosen: array<u32, 256>;
var<workgroup> norm: vec2<f32>; // (max, sum) over the chosen logits

@compute @workgroup_size(256)
fn gate(@builtin(local_invocation_index) i: u32) {
    let n = gp.n_experts;
    if (i < n) {
        var acc = 0.0;
        for (var c = 0u; c < gp.d_phi; c++) {
            acc = fma(weight[i * gp.d_phi + c], phi[c], acc);
        }
        logits[i] = acc + bias[i];
    }
    workgroupBarrier();
    if (i < n) {
        let l = logits[i];
        var rank = 0u;
        for (var j = 0u; j < n; j++) {
            let m = logits[j];
            if (m > l || (m == l && j < i)) {
                rank++;
            }
        }
        chosen[i] = select(0u, 1u, rank < gp.k);
    }
    workgroupBarrier();
    if (i == 0u) {
        var mx = 0.0;
        var any = false;
        for (var j = 0u; j < n; j++) {
            if (chosen[j] == 1u && (!any || logits[j] > mx)) {
                mx = logits[j];
                any = true;
            }
        }
        var sum = 0.0;
        for (var j = 0u; j < n; j++) {
            if (chosen[j] == 1u) {
                sum += exp(logits[j] - mx);
            }
        }
        norm = vec2<f32>(mx, sum);
    }
    workgroupBarrier();
    if (i < n) {
        var g = 0.0;
        if (chosen[i] == 1u) {
            g = exp(logits[i] - norm.x) / norm.y;
        }
        scales[i] = g;
    }
}
