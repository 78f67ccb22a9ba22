//! The dataset contract (docs/DATA.md) on `golden/datasets/`: each case's
//! summary, catalog and per-user sequences, or its error, exactly as its
//! `expected.json` says; the trainer's `test_dataset.py` reads the same files.

use std::path::{Path, PathBuf};

use l2rec_dev::dataset::{DataError, Dataset};
use serde_json::{json, Value};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/datasets")
}

fn observed(data: &Dataset) -> Value {
    let ids = &data.catalog.ids;
    let catalog: Vec<Value> = (0..ids.len())
        .map(|r| json!([ids[r], data.catalog.text_with_categories(r)]))
        .collect();
    let sequences: serde_json::Map<String, Value> = data
        .histories
        .iter()
        .map(|h| {
            let items: Vec<&str> = h.rows.iter().map(|&r| ids[r as usize].as_str()).collect();
            (h.user.clone(), json!(items))
        })
        .collect();
    json!({
        "summary": {
            "users": data.histories.len(),
            "items": ids.len(),
            "cold_items": data.cold_items(),
            "interactions": data.interactions(),
            "dropped": data.dropped,
        },
        "catalog": catalog,
        "sequences": sequences,
        "prompts": {
            "behavioral": data.prompts.behavioral,
            "semantic": data.prompts.semantic,
        },
    })
}

fn check_error(case: &str, err: &DataError, want: &Value) {
    let file = err.file.file_name().and_then(|f| f.to_str());
    assert_eq!(file, want["file"].as_str(), "{case}: {err}");
    let lines: Vec<usize> = serde_json::from_value(want["lines"].clone()).unwrap();
    assert_eq!(err.lines, lines, "{case}: {err}");
    let says = want["says"].as_str().unwrap();
    assert!(
        err.to_string().contains(says),
        "{case}: {err} lacks {says:?}"
    );
}

#[test]
fn every_golden_case_loads_as_the_trainer_loads_it() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("dataset.json").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 8,
        "golden/datasets has {} cases",
        cases.len()
    );
    for dir in cases {
        let case = dir.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        let expected: Value = serde_json::from_str(&text).unwrap();
        match (Dataset::load(Some(&dir)), expected.get("error")) {
            (Err(err), Some(want)) => check_error(&case, &err, want),
            (Ok(data), None) => assert_eq!(observed(&data), expected, "{case}"),
            (Ok(_), Some(want)) => panic!("{case}: loaded, expected the error {want}"),
            (Err(err), None) => panic!("{case}: {err}"),
        }
    }
}

#[test]
fn a_misspelt_option_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = golden().join("jsonl-lists/dataset.json");
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replace("\"interactions\"", "\"filtre\": {}, \"interactions\"");
    std::fs::write(dir.path().join("dataset.json"), text).unwrap();
    let err = Dataset::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("filtre"), "{err}");
}
