//! The GPU side: one wgpu device shared by the process, the shader pipelines,
//! and small helpers to build layouts and read results back.

// The WGSL heads are the tested twin of `kernels::heads` (golden vectors);
// serving runs the heads on the CPU, so the library does not ship them.
#[cfg(test)]
mod heads;
mod scorer;

use std::sync::{mpsc, Arc, OnceLock};

#[cfg(test)]
pub use heads::GpuHeads;
pub(crate) use scorer::{GpuScorer, KCAP};

use super::{KernelError, MulAdd};

/// A wgpu device and queue, with what we learnt about the adapter.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// How this device's WGSL `fma` rounds (probed at creation).
    mul_add: MulAdd,
    /// Scoring pipelines per storage (f32, f16), compiled on first use and
    /// shared by every scorer: shader compilation is the slow part of
    /// creating one (about a second on lavapipe).
    score_pipes: [OnceLock<Arc<scorer::Pipelines>>; 2],
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.adapter_name())
            .finish()
    }
}

static SHARED: OnceLock<Result<Arc<Gpu>, KernelError>> = OnceLock::new();

impl Gpu {
    /// The process-wide device, created on first use: a device costs tens of
    /// milliseconds and real memory, and every scorer and head can share one.
    pub fn shared() -> Result<Arc<Gpu>, KernelError> {
        SHARED.get_or_init(|| Gpu::create().map(Arc::new)).clone()
    }

    fn create() -> Result<Gpu, KernelError> {
        // `WGPU_BACKEND` etc. still apply, for picking a backend by hand.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|e| KernelError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        // Ask for everything the adapter allows: the binding size limit in
        // particular decides how finely a big catalog must be split.
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("l2rec"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| KernelError::Device(e.to_string()))?;
        let mut gpu = Gpu {
            device,
            queue,
            info,
            mul_add: MulAdd::Fused,
            score_pipes: Default::default(),
        };
        gpu.mul_add = gpu.probe_fma()?;
        Ok(gpu)
    }

    /// "name (backend, device type)", e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)".
    pub fn adapter_name(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// How the shaders' multiply-adds round on this device: a CPU twin
    /// built with the same [`MulAdd`] gives bit-identical scores.
    pub fn mul_add(&self) -> MulAdd {
        self.mul_add
    }

    /// Runs `probe_fma.wgsl` once.
    fn probe_fma(&self) -> Result<MulAdd, KernelError> {
        use wgpu::util::DeviceExt;
        let a = 1.0 + 2f32.powi(-12);
        let inputs = [a, a, -(1.0 + 2f32.powi(-11)), 0.0];
        let io = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("fma probe"),
                contents: bytemuck::cast_slice(&inputs),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        let staging = self.buffer(
            "fma probe staging",
            16,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let layout = self.layout("fma probe", &[Bind::ReadWrite]);
        let pipe = self.pipeline(
            "fma probe",
            include_str!("../../../../shaders/probe_fma.wgsl"),
            "probe",
            &layout,
        );
        let bind = self.bind("fma probe", &layout, &[whole(&io)]);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        encoder.copy_buffer_to_buffer(&io, 0, &staging, 0, 16);
        let out = self.finish_and_read(encoder, &staging, 16)?;
        let r = f32::from_le_bytes(out[12..16].try_into().unwrap());
        Ok(if r == 2f32.powi(-24) {
            MulAdd::Fused
        } else {
            MulAdd::Separate
        })
    }

    /// True for software rasterizers such as Mesa's lavapipe: correct, but
    /// slower than the CPU kernels, so never picked automatically.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    pub(crate) fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// A compute pipeline for `entry` of `source` with an explicit layout.
    pub(crate) fn pipeline(
        &self,
        label: &str,
        source: &str,
        entry: &str,
        layout: &wgpu::BindGroupLayout,
    ) -> wgpu::ComputePipeline {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = self.device.create_shader_module(desc);
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            });
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
    }

    /// A bind group layout from a list of binding kinds, in binding order.
    pub(crate) fn layout(&self, label: &str, kinds: &[Bind]) -> wgpu::BindGroupLayout {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: kind.ty(),
                count: None,
            })
            .collect();
        self.device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            })
    }

    /// A bind group binding `resources` in order.
    pub(crate) fn bind(
        &self,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        resources: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        })
    }

    pub(crate) fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        })
    }

    /// Submits `encoder`, waits, and copies the first `bytes` of the mapped
    /// `staging` buffer out.
    pub(crate) fn finish_and_read(
        &self,
        encoder: wgpu::CommandEncoder,
        staging: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, KernelError> {
        self.queue.submit([encoder.finish()]);
        if bytes == 0 {
            self.wait()?;
            return Ok(Vec::new());
        }
        let slice = staging.slice(..bytes);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| KernelError::Gpu(e.to_string()))?
            .map_err(|e| KernelError::Gpu(e.to_string()))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| KernelError::Gpu(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    fn wait(&self) -> Result<(), KernelError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| KernelError::Gpu(e.to_string()))
    }
}

/// Kinds of bindings our shaders use.
#[derive(Clone, Copy)]
pub(crate) enum Bind {
    /// A uniform picked per dispatch with a dynamic offset.
    DynUniform,
    Uniform,
    Read,
    ReadWrite,
}

impl Bind {
    fn ty(self) -> wgpu::BindingType {
        let storage = |read_only| wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        };
        match self {
            Bind::DynUniform | Bind::Uniform => wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: matches!(self, Bind::DynUniform),
                min_binding_size: None,
            },
            Bind::Read => storage(true),
            Bind::ReadWrite => storage(false),
        }
    }
}

/// Whole-buffer binding.
pub(crate) fn whole(b: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    b.as_entire_binding()
}

/// Binding of `size` bytes at offset 0 (dynamic uniform slots).
pub(crate) fn sized(b: &wgpu::Buffer, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: b,
        offset: 0,
        size: wgpu::BufferSize::new(size),
    })
}
