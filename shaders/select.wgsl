// Exact top-k per query by radix select, without sorting the catalog.
// Prefixed by params.wgsl.
//
// The candidates of a chunk are its rows' scores (scratch) plus the top-k
// carried over from earlier chunks. Each candidate has a unique 64-bit key
// (hi, lo): hi orders the score as an unsigned integer (0 = NaN/excluded,
// never selected; -0 counts as +0), lo = ~row so that a lower row wins ties.
// Eight passes, one per key byte from the top, each a histogram (`hist`) and
// a scan (`scan`) that fixes one byte of the k-th largest key T; a query
// whose bucket holds exactly the hits still missing is done early. Then
// `compact` keeps every candidate with key >= T: exactly min(k, valid) hits.
// Every loop is a bounded grid-stride or 256-wide loop (lavapipe ends loops
// silently after 65,535 iterations per invocation).

const KCAP: u32 = 1024u;

@group(0) @binding(1) var<storage, read> scores: array<u32>;
@group(0) @binding(2) var<storage, read> carry_in: array<vec2<u32>>;   // (score bits, row) [q][KCAP]
@group(0) @binding(3) var<storage, read> count_in: array<u32>;         // [q]
@group(0) @binding(4) var<storage, read_write> state: array<vec4<u32>>; // (T.hi, T.lo, taken, done) [q]
@group(0) @binding(5) var<storage, read_write> hist: array<atomic<u32>>; // [q][256]
@group(0) @binding(6) var<storage, read_write> carry_out: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read_write> count_out: array<atomic<u32>>;

// Order-preserving map of f32 bits to u32; 0 for NaN.
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

// Candidate i of query q: (score bits, row).
fn candidate(q: u32, i: u32) -> vec2<u32> {
    if (i < p.chunk_rows) {
        return vec2<u32>(scores[q * p.chunk_rows + i], p.chunk_row0 + i);
    }
    return carry_in[q * KCAP + (i - p.chunk_rows)];
}

fn n_candidates(q: u32) -> u32 {
    return p.chunk_rows + count_in[q];
}

fn key_of(c: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(score_key(c.x), ~c.y);
}

// Mask of the key bits fixed before digit `i`, as (hi, lo).
fn fixed_mask(i: u32) -> vec2<u32> {
    if (i == 0u) {
        return vec2<u32>(0u, 0u);
    }
    if (i < 4u) {
        return vec2<u32>(0xffffffffu << (32u - 8u * i), 0u);
    }
    if (i == 4u) {
        return vec2<u32>(0xffffffffu, 0u);
    }
    return vec2<u32>(0xffffffffu, 0xffffffffu << (32u - 8u * (i - 4u)));
}

fn digit_of(key: vec2<u32>, i: u32) -> u32 {
    if (i < 4u) {
        return (key.x >> (24u - 8u * i)) & 255u;
    }
    return (key.y >> (24u - 8u * (i - 4u))) & 255u;
}

var<workgroup> local_hist: array<atomic<u32>, 256>;

// Histogram of digit `p.digit` over candidates matching the fixed prefix.
// Dispatch: (groups_x, n_queries, 1).
@compute @workgroup_size(256)
fn hist_pass(@builtin(local_invocation_index) li: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.y;
    let st = state[q];
    atomicStore(&local_hist[li], 0u);
    workgroupBarrier();
    if (st.w == 0u) {
        let mask = fixed_mask(p.digit);
        let prefix = vec2<u32>(st.x, st.y);
        let total = n_candidates(q);
        let stride = p.groups_x * 256u;
        for (var i = wid.x * 256u + li; i < total; i += stride) {
            let key = key_of(candidate(q, i));
            if (key.x != 0u && all((key & mask) == prefix)) {
                atomicAdd(&local_hist[digit_of(key, p.digit)], 1u);
            }
        }
    }
    workgroupBarrier();
    let c = atomicLoad(&local_hist[li]);
    if (c != 0u) {
        atomicAdd(&hist[q * 256u + li], c);
    }
}

var<workgroup> suffix: array<u32, 256>;

// Finds the bucket of the k-th largest key and fixes its digit; clears the
// histogram for the next pass. Dispatch: (n_queries, 1, 1).
@compute @workgroup_size(256)
fn scan_pass(@builtin(local_invocation_index) li: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.x;
    // Read the state before the barriers below: one invocation rewrites it
    // at the end, and a late reader would see the new state.
    let st = state[q];
    let h = atomicLoad(&hist[q * 256u + li]);
    atomicStore(&hist[q * 256u + li], 0u);
    // Inclusive suffix sums: suffix[b] = candidates in buckets >= b.
    suffix[li] = h;
    workgroupBarrier();
    for (var off = 1u; off < 256u; off <<= 1u) {
        var v = 0u;
        if (li + off < 256u) {
            v = suffix[li + off];
        }
        workgroupBarrier();
        suffix[li] += v;
        workgroupBarrier();
    }
    if (st.w != 0u) {
        return;
    }
    let incl = suffix[li];
    let above = incl - h;
    let rem = p.k - st.z;
    if (li == 0u && incl < rem) {
        // Fewer valid candidates than wanted (only possible in pass 0):
        // keep them all. T = (1, 0) is below every valid key.
        state[q] = vec4<u32>(1u, 0u, st.z + incl, 1u);
        return;
    }
    if (above < rem && rem <= incl) {
        var hi = st.x;
        var lo = st.y;
        if (p.digit < 4u) {
            hi = hi | (li << (24u - 8u * p.digit));
        } else {
            lo = lo | (li << (24u - 8u * (p.digit - 4u)));
        }
        let done = h == rem - above || p.digit == 7u;
        state[q] = vec4<u32>(hi, lo, st.z + above, select(0u, 1u, done));
    }
}

fn key_ge(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y >= b.y);
}

// Keeps every candidate with key >= T in the next carry.
// Dispatch: (groups_x, n_queries, 1).
@compute @workgroup_size(256)
fn compact(@builtin(local_invocation_index) li: u32,
           @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.y;
    let st = state[q];
    let t = vec2<u32>(st.x, st.y);
    let total = n_candidates(q);
    let stride = p.groups_x * 256u;
    for (var i = wid.x * 256u + li; i < total; i += stride) {
        let c = candidate(q, i);
        let key = key_of(c);
        if (key.x != 0u && key_ge(key, t)) {
            let slot = atomicAdd(&count_out[q], 1u);
            if (slot < KCAP) {
                carry_out[q * KCAP + slot] = c;
            }
        }
    }
}
