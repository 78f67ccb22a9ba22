//! The memory a phone counts, measured on Linux from `/proc/self/smaps`.
//!
//! iOS (`phys_footprint`) and Android's low-memory killer act on anonymous
//! and dirty pages; clean file-backed pages (a mapped model) are dropped under
//! pressure and read again. So a bench reports, besides the resident peak,
//! the dirty peak, and splits the clean file-backed part into the model file
//! and everything else (shared libraries, GPU drivers).
//!
//! [`MemorySampler`] reads `/proc/self/smaps` on a thread every few
//! milliseconds and keeps the peaks; on other systems it reports nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One reading of the process's mappings, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemorySample {
    /// Resident, all mappings.
    pub rss: u64,
    /// Dirty (private and shared), all mappings: what the OS counts.
    pub dirty: u64,
    /// Resident and clean pages of the model file.
    pub file_model: u64,
    /// Resident and clean pages of every other file.
    pub file_other: u64,
}

/// Reads one sample from smaps text; `model` names the model file.
pub fn parse_smaps(text: &str, model: &Path) -> MemorySample {
    let model = model.to_string_lossy();
    let mut out = MemorySample::default();
    let mut path: Option<&str> = None;
    let (mut rss, mut dirty) = (0u64, 0u64);
    let flush = |path: Option<&str>, rss: u64, dirty: u64, out: &mut MemorySample| {
        out.rss += rss;
        out.dirty += dirty;
        match path {
            Some(p) if p == model => out.file_model += rss.saturating_sub(dirty),
            Some(p) if p.starts_with('/') => out.file_other += rss.saturating_sub(dirty),
            _ => {}
        }
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.ends_with(':') {
            let kb = fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
            match first {
                "Rss:" => rss = kb,
                "Private_Dirty:" | "Shared_Dirty:" => dirty += kb,
                _ => {}
            }
        } else if first.contains('-') {
            // A mapping header: `start-end perms offset dev inode [path]`.
            flush(path, rss, dirty, &mut out);
            (rss, dirty) = (0, 0);
            path = line.split_whitespace().nth(5);
        }
    }
    flush(path, rss, dirty, &mut out);
    out
}

/// Peaks of the process's memory, sampled on a thread until [`MemorySampler::finish`].
pub struct MemorySampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Peaks>>,
    thread: Option<JoinHandle<()>>,
}

/// What [`MemorySampler::finish`] returns.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    /// The largest dirty total seen.
    pub dirty: u64,
    /// The sample with the largest resident total.
    pub at_rss_peak: MemorySample,
    pub samples: usize,
    /// The largest dirty total seen in each phase (see
    /// [`MemorySampler::phase`]), in the order the phases began.
    pub dirty_by_phase: Vec<(&'static str, u64)>,
}

impl MemorySampler {
    /// Starts sampling every `every`; `model` is the model file's path.
    pub fn start(model: &Path, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let (s, p, model): (_, _, PathBuf) = (stop.clone(), peaks.clone(), model.to_owned());
        let model = std::fs::canonicalize(&model).unwrap_or(model);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string("/proc/self/smaps") {
                    let sample = parse_smaps(&text, &model);
                    let mut peaks = p.lock().unwrap_or_else(|e| e.into_inner());
                    peaks.samples += 1;
                    peaks.dirty = peaks.dirty.max(sample.dirty);
                    if let Some((_, dirty)) = peaks.dirty_by_phase.last_mut() {
                        *dirty = (*dirty).max(sample.dirty);
                    }
                    if sample.rss > peaks.at_rss_peak.rss {
                        peaks.at_rss_peak = sample;
                    }
                }
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// Starts a named phase: later samples count toward its peak, so a
    /// report can say which step holds the memory.
    pub fn phase(&self, name: &'static str) {
        let mut peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        peaks.dirty_by_phase.push((name, 0));
    }

    /// Stops sampling; `None` where no sample could be read (not Linux).
    pub fn finish(mut self) -> Option<Peaks> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (peaks.samples > 0).then_some(peaks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5555-6666 r--p 00000000 08:01 42 /models/gemma.gguf
Rss:                2048 kB
Private_Dirty:         0 kB
7777-8888 rw-p 00000000 00:00 0
Rss:                1024 kB
Private_Dirty:      1000 kB
Shared_Dirty:         24 kB
9999-aaaa r-xp 00000000 08:01 7 /usr/lib/libvulkan_lvp.so
Rss:                 512 kB
Private_Dirty:        12 kB
";

    #[test]
    fn splits_dirty_model_and_other_files() {
        let s = parse_smaps(SMAPS, Path::new("/models/gemma.gguf"));
        assert_eq!(s.rss, (2048 + 1024 + 512) * 1024);
        assert_eq!(s.dirty, (1000 + 24 + 12) * 1024);
        assert_eq!(s.file_model, 2048 * 1024);
        assert_eq!(s.file_other, 500 * 1024);
    }

    #[test]
    fn samples_this_process() {
        let sampler = MemorySampler::start(Path::new("/nonexistent"), Duration::from_millis(1));
        // 8 MB written (dirty), kept alive past the sampling.
        let keep = std::hint::black_box(vec![1u8; 8 << 20]);
        std::thread::sleep(Duration::from_millis(50));
        let peaks = sampler.finish().expect("Linux has /proc/self/smaps");
        assert!(peaks.dirty >= 8 << 20, "{peaks:?}");
        assert_eq!(std::hint::black_box(&keep)[123], 1);
    }
}
