//! The recommendation heads: gate, projection, fusion, catalog scoring and
//! top-k (SPEC steps 1, 5, 6, 7, 8), on the CPU and on the GPU (wgpu/WGSL).
