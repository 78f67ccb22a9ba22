// Sorts each query's final top-k (at most KCAP hits, unordered) by score
// descending, row ascending, with a bitonic sort in workgroup memory: one
// workgroup per query, 55 compare-exchange rounds of 2 per invocation.

const KCAP: u32 = 1024u;

@group(0) @binding(0) var<storage, read> carry: array<vec2<u32>>;  // (score bits, row)
@group(0) @binding(1) var<storage, read> count: array<u32>;
@group(0) @binding(2) var<storage, read_write> hits: array<vec2<u32>>; // sorted (score bits, row)

var<workgroup> keys: array<vec2<u32>, 1024>;

// Same order-preserving key as select.wgsl.
fn score_key(bits_in: u32) -> u32 {
    var bits = bits_in;
    let mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) {
        return 0u;
    }
    if (mag == 0u) {
        bits = 0u;
    }
    if ((bits & 0x80000000u) != 0u) {
        return ~bits;
    }
    return bits | 0x80000000u;
}

fn key_to_bits(hi: u32) -> u32 {
    if ((hi & 0x80000000u) != 0u) {
        return hi & 0x7fffffffu;
    }
    return ~hi;
}

fn key_lt(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x < b.x || (a.x == b.x && a.y < b.y);
}

@compute @workgroup_size(256)
fn sort(@builtin(local_invocation_index) li: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.x;
    let n = min(count[q], KCAP);
    for (var s = 0u; s < 4u; s++) {
        let t = li + s * 256u;
        var key = vec2<u32>(0u, 0u);
        if (t < n) {
            let c = carry[q * KCAP + t];
            key = vec2<u32>(score_key(c.x), ~c.y);
        }
        keys[t] = key;
    }
    workgroupBarrier();
    for (var size = 2u; size <= KCAP; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var h = 0u; h < 2u; h++) {
                let t = li + h * 256u;
                let i = 2u * stride * (t / stride) + (t % stride);
                let j = i + stride;
                let descending = (i & size) == 0u;
                let a = keys[i];
                let b = keys[j];
                if (descending == key_lt(a, b)) {
                    keys[i] = b;
                    keys[j] = a;
                }
            }
            workgroupBarrier();
        }
    }
    for (var s = 0u; s < 4u; s++) {
        let t = li + s * 256u;
        if (t < n) {
            hits[q * KCAP + t] = vec2<u32>(key_to_bits(keys[t].x), ~keys[t].y);
        }
    }
}
