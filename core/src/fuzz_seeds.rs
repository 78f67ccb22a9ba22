//! Writes the fuzz targets' seed inputs when `L2REC_FUZZ_SEEDS` names a
//! directory (scripts/fuzz runs the seed tests so): each seed to
//! `DIR/<prefix>_<target>/seed-<sha256 prefix>`, a name that changes only
//! when the seed does. Tests only: the seeds come from the real encoders.

use sha2::{Digest, Sha256};

pub(crate) fn write_if_asked(prefix: &str, seeds: &[(&str, Vec<u8>)]) {
    let Some(dir) = std::env::var_os("L2REC_FUZZ_SEEDS") else {
        return;
    };
    for (target, input) in seeds {
        let folder = std::path::Path::new(&dir).join(format!("{prefix}_{target}"));
        std::fs::create_dir_all(&folder).expect("the seed folder can be made");
        let name = format!("seed-{}", &hex::encode(Sha256::digest(input))[..16]);
        std::fs::write(folder.join(name), input).expect("the seed can be written");
    }
}
