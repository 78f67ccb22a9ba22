// Marks excluded rows (a user's history) in the chunk's score scratch with
// a NaN, which the selection treats as "never return". One invocation per
// (query, row) pair, so the cost is the history's length, not the catalog's.
// Prefixed by params.wgsl.

@group(0) @binding(1) var<storage, read> excl: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> scores: array<u32>;

const NAN_BITS: u32 = 0x7fc00000u;

@compute @workgroup_size(256)
fn exclude(@builtin(global_invocation_id) gid: vec3<u32>) {
    let stride = p.groups_x * 256u;
    for (var i = gid.x; i < p.n_excl; i += stride) {
        let e = excl[i];
        if (e.x < p.n_queries && e.y >= p.chunk_row0 && e.y - p.chunk_row0 < p.chunk_rows) {
            scores[e.x * p.chunk_rows + (e.y - p.chunk_row0)] = NAN_BITS;
        }
    }
}
