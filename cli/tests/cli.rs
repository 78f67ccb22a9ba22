//! The command line on the real model: inspect's exit codes, the demo.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::process::Command;

fn l2rec(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_l2rec"))
        .args(args)
        .env("L2REC_THREADS", "1")
        .output()
        .expect("run l2rec")
}

#[test]
fn inspect_accepts_a_valid_bundle_and_refuses_a_broken_one_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = common::write_small_bundle(&dir.path().join("b"));
    let out = l2rec(&["inspect", bundle.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("view semantic: 2 experts, top-1 active"),
        "{stdout}"
    );
    assert!(stdout.contains("items: 40"), "{stdout}");

    std::fs::write(bundle.join("heads.safetensors"), b"nonsense").unwrap();
    let out = l2rec(&["inspect", bundle.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("heads.safetensors"), "{stderr}");
}

#[test]
fn demo_recommends_for_users_with_latencies_and_names_its_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = common::write_small_bundle(&dir.path().join("b"));
    // Users for whom the 40-item bundle has at least 5 unseen items.
    let data = common::dataset();
    let users: Vec<&str> = data
        .histories
        .iter()
        .filter(|h| {
            h.rows
                .iter()
                .filter(|&&r| (r as usize) < common::SMALL_ITEMS)
                .count()
                < 20
        })
        .map(|h| h.user.as_str())
        .take(2)
        .collect();
    let out = l2rec(&[
        "demo",
        "--bundle",
        bundle.to_str().unwrap(),
        "--users",
        &users.join(","),
        "--k",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("bundle: {}", bundle.display())),
        "{stdout}"
    );
    assert_eq!(stdout.matches("latency: gate").count(), 2, "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("5. "))
            .count(),
        2,
        "{stdout}"
    );
}

#[test]
fn demo_with_an_unknown_user_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = common::write_small_bundle(&dir.path().join("b"));
    let out = l2rec(&[
        "demo",
        "--bundle",
        bundle.to_str().unwrap(),
        "--users",
        "99999",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user 99999"));
}

/// The trained bundle the demo serves by default, committed in `bundles/`.
fn default_bundle() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles/ml-100k")
}

#[test]
fn the_committed_default_bundle_verifies() {
    let out = l2rec(&["inspect", default_bundle().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("items: 1682"));
}

#[test]
fn eval_prints_the_protocol_metrics_and_per_user_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let per_user = dir.path().join("per-user.jsonl");
    let out = l2rec(&[
        "eval",
        "--bundle",
        default_bundle().to_str().unwrap(),
        "--user-ids",
        "1,2,3",
        "--json",
        "--per-user",
        per_user.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["users"], 3);
    for key in ["HR@10", "NDCG@10", "HR@20", "NDCG@20"] {
        let v = report[key].as_f64().expect(key);
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&per_user)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["top"].as_array().unwrap().len(), 20);
        assert_eq!(line["u"].as_array().unwrap().len(), 64);
    }
    // HR@20 is the share of users whose target made the top 20.
    let hr20 = lines.iter().filter(|l| !l["rank"].is_null()).count() as f64 / 3.0;
    assert!((report["HR@20"].as_f64().unwrap() - hr20).abs() < 1e-12);

    let out = l2rec(&[
        "eval",
        "--bundle",
        default_bundle().to_str().unwrap(),
        "--user-ids",
        "nobody",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user nobody"));
}

fn golden_dataset(case: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/datasets");
    dir.join(case).to_string_lossy().into_owned()
}

#[test]
fn demo_serves_a_dataset_of_your_own_from_csv() {
    let out = l2rec(&["demo", "--data", &golden_dataset("csv-strings"), "--k", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("catalog: csv-strings, 6 items, 3 users"),
        "{stdout}"
    );
    // Its first three users, each served from the dataset's zero-shot bundle.
    for user in ["u17", "u5", "u8"] {
        assert!(stdout.contains(user), "{user} missing:\n{stdout}");
    }
    assert!(
        stdout.contains("bundle \"zero-shot-csv-strings\""),
        "{stdout}"
    );
}

#[test]
fn eval_on_a_broken_dataset_names_the_file_and_lines() {
    let out = l2rec(&[
        "eval",
        "--bundle",
        default_bundle().to_str().unwrap(),
        "--data",
        &golden_dataset("error-unknown-item"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("events.csv:3,4,6: 3 interaction(s) name 2 item id(s)"),
        "{stderr}"
    );
}
