//! The small heads on the GPU (gate.wgsl, project.wgsl, fuse.wgsl), twins of
//! `kernels::heads`. Their inputs are a few kilobytes, so each call makes
//! its small buffers; the pipelines are made once, in `GpuHeads::new`.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::{whole, Bind, Gpu};
use crate::kernels::{Fused, KernelError};

/// Most experts the gate shader handles (one workgroup of 256).
pub const GATE_MAX_EXPERTS: usize = 256;

pub struct GpuHeads {
    gpu: Arc<Gpu>,
    gate: wgpu::ComputePipeline,
    project: wgpu::ComputePipeline,
    fuse: wgpu::ComputePipeline,
}

impl GpuHeads {
    /// Uses the process-wide device (`Gpu::shared`).
    pub fn new() -> Result<Self, KernelError> {
        Ok(Self::with_gpu(Gpu::shared()?))
    }

    pub fn with_gpu(gpu: Arc<Gpu>) -> Self {
        use Bind::*;
        let l5 = gpu.layout("heads", &[Uniform, Read, Read, Read, ReadWrite]);
        let l6 = gpu.layout("fuse", &[Uniform, Read, Read, Read, Read, ReadWrite]);
        Self {
            gate: gpu.pipeline(
                "gate",
                include_str!("../../../../shaders/gate.wgsl"),
                "gate",
                &l5,
            ),
            project: gpu.pipeline(
                "project",
                include_str!("../../../../shaders/project.wgsl"),
                "project",
                &l5,
            ),
            fuse: gpu.pipeline(
                "fuse",
                include_str!("../../../../shaders/fuse.wgsl"),
                "fuse",
                &l6,
            ),
            gpu,
        }
    }

    pub fn adapter_name(&self) -> String {
        self.gpu.adapter_name()
    }

    /// GPU twin of [`crate::kernels::gate`].
    pub fn gate(
        &self,
        weight: &[f32],
        bias: &[f32],
        phi: &[f32],
        k: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let n = bias.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > GATE_MAX_EXPERTS || weight.len() != n * phi.len() {
            return Err(KernelError::Shape(format!(
                "gate: {n} experts (at most {GATE_MAX_EXPERTS}), weight {} for d_phi {}",
                weight.len(),
                phi.len()
            )));
        }
        let params = [n as u32, phi.len() as u32, k.clamp(1, n) as u32, 0];
        self.run(&self.gate, &params, &[weight, bias, phi], n, (1, 1))
    }

    /// GPU twin of [`crate::kernels::project`].
    pub fn project(
        &self,
        weight: &[f32],
        bias: &[f32],
        h: &[f32],
    ) -> Result<Vec<f32>, KernelError> {
        let d_out = bias.len();
        if weight.len() != d_out * h.len() {
            return Err(KernelError::Shape(format!(
                "projection: weight {} for [{d_out}, {}]",
                weight.len(),
                h.len()
            )));
        }
        let params = [d_out as u32, h.len() as u32, 0, 0];
        let groups = (d_out as u32).div_ceil(64);
        self.run(
            &self.project,
            &params,
            &[weight, bias, h],
            d_out,
            (groups, 1),
        )
    }

    /// GPU twin of [`crate::kernels::fuse`].
    pub fn fuse(
        &self,
        weight: &[f32],
        bias: &[f32],
        z_b: &[f32],
        z_s: &[f32],
    ) -> Result<Fused, KernelError> {
        let dr = bias.len();
        if weight.len() != 3 * dr * dr || z_b.len() != dr || z_s.len() != dr {
            return Err(KernelError::Shape(format!(
                "fusion: d_r {dr}, weight {}",
                weight.len()
            )));
        }
        let params = [dr as u32, 0, 0, 0];
        let groups = (dr as u32).div_ceil(64);
        let out = self.run(
            &self.fuse,
            &params,
            &[weight, bias, z_b, z_s],
            2 * dr,
            (groups, 1),
        )?;
        Ok(Fused {
            u: out[..dr].to_vec(),
            beta: out[dr..].to_vec(),
        })
    }

    /// Binds `params` (uniform), `inputs` (read-only storage) and an output
    /// of `n_out` floats, dispatches, and reads the output back.
    fn run(
        &self,
        pipe: &wgpu::ComputePipeline,
        params: &[u32; 4],
        inputs: &[&[f32]],
        n_out: usize,
        groups: (u32, u32),
    ) -> Result<Vec<f32>, KernelError> {
        use wgpu::BufferUsages as U;
        let dev = &self.gpu.device;
        let init = |label, bytes: &[u8], usage| {
            // Storage bindings may not be empty.
            let bytes = if bytes.is_empty() {
                &[0u8; 4][..]
            } else {
                bytes
            };
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage,
            })
        };
        let uniform = init("head params", bytemuck::cast_slice(params), U::UNIFORM);
        let ins: Vec<wgpu::Buffer> = inputs
            .iter()
            .map(|x| init("head input", bytemuck::cast_slice(x), U::STORAGE))
            .collect();
        let bytes = (n_out * 4) as u64;
        let out = self
            .gpu
            .buffer("head output", bytes, U::STORAGE | U::COPY_SRC);
        let staging = self
            .gpu
            .buffer("head staging", bytes, U::MAP_READ | U::COPY_DST);
        let mut res = vec![whole(&uniform)];
        res.extend(ins.iter().map(whole));
        res.push(whole(&out));
        let bind = self.gpu.bind("head", &pipe.get_bind_group_layout(0), &res);
        let mut encoder = dev.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipe);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        }
        encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes);
        let data = self.gpu.finish_and_read(encoder, &staging, bytes)?;
        Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect())
    }
}
