"""The converged baselines' inputs (seqrec.py) and the seeded report (seeds_report.py)."""

import json

import numpy as np
import pytest

from l2rec_train import data, metrics, seeds_report, seqrec


def test_training_pairs_pad_left_and_mark_missing_targets():
    split = data.Split(
        ["u1", "u2"],
        [np.array([3, 1, 4, 1, 5, 9]), np.array([2, 6])],
        np.array([0, 0]),
        np.array([0, 0]),
    )
    x, y = seqrec.training_pairs(split, max_len=4)
    # u1's last window of 5 items: inputs 1 4 1 5 (ids = rows + 1), targets 4 1 5 9.
    assert x[0].tolist() == [2, 5, 2, 6] and y[0].tolist() == [4, 1, 5, 9]
    # u2: one input, one target, left-padded (0 input, -1 target).
    assert x[1].tolist() == [0, 0, 0, 3] and y[1].tolist() == [-1, -1, -1, 6]
    xa, ya = seqrec.training_pairs(split, max_len=2, windows="all")
    assert len(xa) == 4  # u1 in windows [3 1], [1 4 1], [1 5 9]; u2 in one
    targets = [int(t) for t in ya.flatten() if t >= 0]
    assert sorted(targets) == sorted([1, 4, 1, 5, 9, 6])  # every item after the first, once


def test_standard_error_and_paired_comparison(tmp_path):
    assert metrics.standard_error([1.0, 3.0]) == pytest.approx(1.0)
    assert np.isnan(metrics.standard_error([1.0]))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 40, size=200)
    for name, shift in (("a", 0), ("b", 3)):
        for seed in range(2):
            ranks = np.maximum(base + shift + seed, 0)
            test = metrics.from_ranks(ranks)
            run = {"test": test, "test_ranks": ranks.tolist(), "valid_ndcg10_by_epoch": [0.1]}
            (tmp_path / f"{name}-seed{seed}.json").write_text(json.dumps(run))
    models = {
        lb: seeds_report.summarize(seeds_report.load(f"{lb}={tmp_path}/{lb}-seed*.json")[1])
        for lb in ("a", "b")
    }
    assert models["a"]["seeds"] == 2 and models["a"]["NDCG@10"] > models["b"]["NDCG@10"]
    v = seeds_report.versus(models["a"], models["b"])
    assert v["difference"] > 0 and v["ratio"] > 1 and v["se"] > 0
    table = seeds_report.markdown(models, [("a", "b")])
    assert "| a vs b |" in table


def test_rows_hold_every_seed_and_split_and_the_block_is_replaced_in_place():
    metric = {m: 0.1 for m in seeds_report.METRICS}
    raw = {
        "a": [{"seed": s, "valid": metric, "test": metric, "best_epoch": 3} for s in (0, 1)],
        "cold": [{"seed": 0, "test": metric, "test_cold": metric, "test_warm": metric}],
    }
    rows = seeds_report.rows(raw)
    assert [(r["model"], r["seed"], r["split"]) for r in rows] == [
        ("a", 0, "valid"),
        ("a", 0, "test"),
        ("a", 1, "valid"),
        ("a", 1, "test"),
        ("cold", 0, "test"),
        ("cold", 0, "test_cold"),
        ("cold", 0, "test_warm"),
    ]
    assert all(r["NDCG@10"] == 0.1 and "HR@20" in r for r in rows)
    doc = f"intro\n{seeds_report.BEGIN}\nold table\n{seeds_report.END}\nafter\n"
    new = seeds_report.replace_block(doc, "| new |")
    assert new == f"intro\n{seeds_report.BEGIN}\n| new |\n{seeds_report.END}\nafter\n"
    with pytest.raises(SystemExit, match="no '<!-- seeds_report:begin -->'"):
        seeds_report.replace_block("no markers", "| new |", "RESULTS.md")
