// Catalog segment stored as f32, in the grouped layout of
// core/src/kernels/catalog.rs: element (row, dd) at
// ((row / 64) * d + dd) * 64 + row % 64. A warp's neighbouring rows read
// neighbouring addresses.
@group(0) @binding(1) var<storage, read> cat: array<f32>;

fn load_e(group: u32, dd: u32, lane: u32) -> f32 {
    return cat[(group * p.d + dd) * 64u + lane];
}
