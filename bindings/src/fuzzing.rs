//! The entry point of the `ffi_arguments` fuzz target (`fuzz/README.md`):
//! arbitrary bytes lifted as the foreign side's arguments (UniFFI's own
//! decoding of a `RustBuffer`), converted to the engine's types and checked
//! by the engine's boundary rules, then mapped to the FFI error, as a call
//! would. No model: the checks are pure. Compiled under the fuzzer's `cfg`
//! and for the unit tests that keep it building and write the seeds.

use l2rec::engine as core;
use uniffi::{Lift, Lower};

use crate::{Durability, RecommenderConfig, UniFfiTag};
use crate::{Event, Item, L2recError, Limits, PersonalizeOptions, RecommendOptions};

/// Which call's arguments the rest of the input holds.
const CALLS: u8 = 4;

/// Input: a selector byte (open, upsert_items, observe, recommend or
/// personalize), then the arguments as UniFFI serializes them.
pub fn decode_arguments(data: &[u8]) {
    let Some((selector, mut rest)) = data.split_first() else {
        return;
    };
    let buf = &mut rest;
    let limits = core::Limits::default();
    let checked: Result<(), L2recError> = match selector % (CALLS + 1) {
        0 => read::<RecommenderConfig>(buf).and_then(|config| {
            let config: core::EngineConfig = config.try_into()?;
            Ok(config.validate()?)
        }),
        1 => plausible_count(buf, MIN_ITEM_BYTES)
            .and_then(|()| read::<Vec<Item>>(buf))
            .and_then(|items| {
                let items: Vec<core::ItemInput> = items.into_iter().map(Into::into).collect();
                Ok(limits.check_items(&items)?)
            }),
        2 => read::<String>(buf).and_then(|user| {
            let event: core::EventInput = read::<Event>(buf)?.into();
            limits.check_id(&user)?;
            Ok(limits.check_event(&event)?)
        }),
        3 => read::<String>(buf).and_then(|user| {
            let k = read::<u32>(buf)?;
            let _options: core::RecommendOptions = read::<RecommendOptions>(buf)?.into();
            limits.check_id(&user)?;
            Ok(limits.check_k(k as usize)?)
        }),
        _ => read::<PersonalizeOptions>(buf).and_then(|options| {
            let options: core::PersonalizeOptions = options.into();
            options.validate().map_err(core::EngineError::Invalid)?;
            Ok(())
        }),
    };
    // The message is what the app would show: building it must not panic.
    if let Err(e) = checked {
        let _ = e.to_string();
    }
}

/// The fewest bytes an `Item` takes in a buffer: two strings' length prefixes.
const MIN_ITEM_BYTES: usize = 8;

/// Refuses a sequence whose length prefix promises more elements than the
/// buffer could hold. UniFFI's sequence lift (`uniffi_core` 0.32,
/// `Vec<T>::try_read`) preallocates the capacity the prefix states, so a
/// prefix of 2^31 - 1 `Item`s asks for ~100 GB and aborts the process. The
/// buffers of a real call are written by the generated foreign code, which
/// states the true length, so no app argument can do this; the fuzzer found
/// it (fuzz/README.md, "Findings"), and this guard lets it go on past it.
fn plausible_count(buf: &[u8], min_element_bytes: usize) -> Result<(), L2recError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(()); // the lift itself refuses a short buffer
    };
    let count = usize::try_from(i32::from_be_bytes(*prefix)).unwrap_or(0);
    if count.saturating_mul(min_element_bytes) > buf.len() - 4 {
        return Err(L2recError::InvalidArgument(format!(
            "a sequence of {count} elements in a buffer of {} bytes",
            buf.len()
        )));
    }
    Ok(())
}

fn read<T: Lift<UniFfiTag>>(buf: &mut &[u8]) -> Result<T, L2recError> {
    T::try_read(buf).map_err(|e| L2recError::InvalidArgument(format!("undecodable: {e}")))
}

fn write<T: Lower<UniFfiTag>>(value: T, out: &mut Vec<u8>) {
    T::write(value, out);
}

/// Valid and boundary arguments of every call, serialized as the foreign
/// side serializes them.
pub fn seeds() -> Vec<Vec<u8>> {
    let config = RecommenderConfig {
        model_path: "/models/gemma.gguf".into(),
        bundle_dir: "/bundles/ml-100k".into(),
        store_path: "/data/store".into(),
        master_key: Some(vec![7; 32]),
        durability: Some(Durability::Batched {
            flush_every_ms: 500,
        }),
        max_events_per_user: Some(1000),
        threads: Some(2),
        limits: Some(Limits {
            max_id_bytes: 256,
            max_text_bytes: 2048,
            max_k: 1000,
            max_items_per_call: 100_000,
            max_kind_bytes: 64,
        }),
    };
    let event = |kind: &str, text: Option<&str>| Event {
        item_id: "m42".into(),
        timestamp_ms: 1_700_000_000_000,
        kind: kind.into(),
        item_text: text.map(String::from),
    };
    let mut seeds = Vec::new();
    let mut seed = |selector: u8, fill: &dyn Fn(&mut Vec<u8>)| {
        let mut input = vec![selector];
        fill(&mut input);
        seeds.push(input);
    };
    seed(0, &|b| write(config.clone(), b));
    seed(0, &|b| {
        write(
            RecommenderConfig {
                master_key: None,
                durability: None,
                limits: None,
                ..config.clone()
            },
            b,
        )
    });
    seed(1, &|b| {
        let item = |id: &str, text: &str| Item {
            id: id.into(),
            text: text.into(),
        };
        write(
            vec![item("m1", "Toy Story (1995)"), item("m2", "Heat (1995)")],
            b,
        )
    });
    seed(2, &|b| {
        write("u1".to_owned(), b);
        write(event("view", None), b);
    });
    seed(2, &|b| {
        write("u1".to_owned(), b);
        write(event("play", Some("A new film (2026)")), b);
    });
    seed(3, &|b| {
        write("u1".to_owned(), b);
        write(10u32, b);
        write(
            RecommendOptions {
                include_history: true,
            },
            b,
        );
    });
    seed(4, &|b| {
        write(
            PersonalizeOptions {
                steps: 16,
                learning_rate: 0.5,
                l2: 0.01,
                holdout: 0.25,
            },
            b,
        )
    });
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed decodes and passes (the fuzzer starts from calls the
    /// engine would serve); truncations and garbage are refused, never a
    /// panic. With `L2REC_FUZZ_SEEDS=DIR` the seeds go to
    /// `DIR/ffi_arguments/` (scripts/fuzz).
    #[test]
    fn the_ffi_fuzz_seeds_decode_and_pass_and_garbage_is_refused() {
        let seeds = seeds();
        for input in &seeds {
            let mut buf = &input[1..];
            let first_passes = match input[0] {
                0 => read::<RecommenderConfig>(&mut buf).is_ok(),
                1 => read::<Vec<Item>>(&mut buf).is_ok(),
                2 | 3 => read::<String>(&mut buf).is_ok(),
                _ => read::<PersonalizeOptions>(&mut buf).is_ok(),
            };
            assert!(first_passes, "seed {input:?}");
            for cut in 0..input.len() {
                decode_arguments(&input[..cut]);
            }
            decode_arguments(input);
        }
        for garbage in [
            &[0u8, 0xff, 0xff, 0xff, 0xff][..],
            &[1, 0x7f, 0, 0, 0],
            &[9],
        ] {
            decode_arguments(garbage);
        }
        if let Some(dir) = std::env::var_os("L2REC_FUZZ_SEEDS") {
            let folder = std::path::Path::new(&dir).join("ffi_arguments");
            std::fs::create_dir_all(&folder).unwrap();
            for (i, input) in seeds.iter().enumerate() {
                std::fs::write(folder.join(format!("seed-{i}")), input).unwrap();
            }
        }
    }
}
