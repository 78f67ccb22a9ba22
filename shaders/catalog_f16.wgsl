// Catalog segment stored as f16 pairs packed in u32 (low half = even row),
// same grouped layout as catalog_f32.wgsl. unpack2x16float widens exactly.
@group(0) @binding(1) var<storage, read> cat: array<u32>;

fn load_e(group: u32, dd: u32, lane: u32) -> f32 {
    let w = cat[(group * p.d + dd) * 32u + (lane >> 1u)];
    return unpack2x16float(w)[lane & 1u];
}
