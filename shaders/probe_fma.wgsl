// Tells whether this device's fma() is fused (one rounding) or a multiply
// and an add (two roundings; lavapipe does this). Inputs come from a buffer
// so the compiler cannot fold them: fma(1+2^-12, 1+2^-12, -(1+2^-11)) is
// 2^-24 when fused and 0 when not.
@group(0) @binding(0) var<storage, read_write> io: array<f32>;

@compute @workgroup_size(1)
fn probe() {
    io[3] = fma(io[0], io[1], io[2]);
}
