// Per-dispatch parameters shared by the catalog-scoring shaders
// (score.wgsl, exclude.wgsl, select.wgsl, sort.wgsl). The host writes one
// copy per dispatch into a single uniform buffer and picks it with a
// dynamic offset, so no buffer is created per request.
struct Params {
    d: u32,           // catalog dimension
    seg_rows: u32,    // valid rows in the segment being scored
    seg_row0: u32,    // chunk-local index of the segment's first row
    chunk_rows: u32,  // rows in the current chunk: stride of one query's scores
    chunk_row0: u32,  // catalog row of the chunk's first row
    n_queries: u32,   // queries in this pass
    k: u32,           // hits wanted per query (<= KCAP)
    digit: u32,       // radix-select digit, 0..7 (most significant first)
    n_excl: u32,      // (query, row) exclusion pairs
    groups_x: u32,    // workgroups along x, for grid-stride loops
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
