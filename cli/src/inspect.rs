//! `l2rec inspect DIR`: verify a bundle and summarize it.

use std::path::PathBuf;
use std::process::ExitCode;

use l2rec::backbone::ModelInfo;
use l2rec::bundle::Bundle;
use l2rec::prompt::View;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The backbone the bundle must match (default: the fetched model).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// Exit 0 and a summary for a valid bundle; exit 2 and one line for an invalid one.
pub fn run(args: &InspectArgs) -> ExitCode {
    match inspect(args) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("invalid bundle: {reason}");
            ExitCode::from(2)
        }
    }
}

fn inspect(args: &InspectArgs) -> Result<String, String> {
    let model = match &args.model {
        Some(path) => path.clone(),
        None => l2rec_dev::assets::model_path().map_err(|e| e.to_string())?,
    };
    let info = ModelInfo::read(&model, None).map_err(|e| e.to_string())?;
    let bundle = Bundle::open(&args.dir, &info).map_err(|e| e.to_string())?;
    Ok(summary(&bundle))
}

fn summary(b: &Bundle) -> String {
    let m = &b.manifest;
    let mut out = format!(
        "bundle: {}\nname: {}\nformat: {} v{}\n",
        b.dir.display(),
        m.name,
        m.format,
        m.version
    );
    out += &format!(
        "backbone: {} ({}, n_embd {}, {} layers, sha256 {})\n",
        m.backbone.file, m.backbone.arch, m.backbone.n_embd, m.backbone.n_layer, m.backbone.sha256
    );
    for view in View::BOTH {
        let v = m.views.get(view);
        out += &format!(
            "view {view}: {} experts, top-{} active, prefix {:?}, sep {:?}\n",
            v.experts, v.k, v.template.prefix, v.template.sep
        );
    }
    out += &format!(
        "lora: rank {}, alpha {}, layers {:?}, modules {:?}\n",
        m.lora.rank, m.lora.alpha, m.lora.layers, m.lora.modules
    );
    out += &format!(
        "dims: d {}, d_r {}, d_phi {}; history up to {} items\n",
        m.dims.d, m.dims.d_r, m.dims.d_phi, m.history.max_items
    );
    let states = if b.items.text_state.is_some() {
        "shipped"
    } else {
        "computed on device"
    };
    out += &format!("items: {} (text states {states})\n", m.items.count);
    if let Some(users) = &b.users {
        out += &format!("users: {}\n", users.ids.len());
    }
    let bytes: u64 = m.files.values().map(|f| f.bytes).sum();
    out += &format!(
        "files: {} verified, {:.1} MB\n",
        m.files.len(),
        bytes as f64 / 1e6
    );
    out
}
