"""The dataset contract (docs/DATA.md) on golden/datasets/: every case's rows, drops and
sequences, or its error, as `expected.json` says; the dev crate's loader is tested against
the same files. `L2REC_GOLDEN_WRITE=1` rewrites the expected files of the cases that load
(review the diff: these are the contract)."""

import json
import os
from pathlib import Path

import pytest

from l2rec_train import data, dataset

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "datasets"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "dataset.json").exists())


def observed(case: str) -> dict:
    ds = dataset.load_dataset(GOLDEN / case)
    catalog, split = data.load(ds, genres=True)
    s = ds.summary()
    ids = catalog.item_ids
    return {
        "summary": {k: s[k] for k in ("users", "items", "cold_items", "interactions", "dropped")},
        "catalog": [[i, t] for i, t in zip(ids, catalog.texts, strict=True)],
        "sequences": {
            u: [ids[r] for r in [*split.train[k], split.valid[k], split.test[k]]]
            for k, u in enumerate(split.user_ids)
        },
        "prompts": {
            "behavioral": ds.config.prompts.behavioral,
            "semantic": ds.config.prompts.semantic,
        },
    }


@pytest.mark.parametrize("case", CASES)
def test_golden_dataset(case):
    path = GOLDEN / case / "expected.json"
    expected = json.loads(path.read_text()) if path.exists() else None
    if expected is not None and "error" in expected:
        want = expected["error"]
        with pytest.raises(dataset.DataError) as e:
            dataset.load_dataset(GOLDEN / case)
        assert Path(e.value.file).name == want["file"]
        assert e.value.lines[: len(want["lines"])] == want["lines"], str(e.value)
        assert want["says"] in str(e.value)
        return
    got = observed(case)
    if os.environ.get("L2REC_GOLDEN_WRITE"):
        path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    assert got == expected


def test_a_config_with_an_unknown_key_says_which(tmp_path):
    (tmp_path / "dataset.json").write_text(
        json.dumps({"name": "x", "format": "csv", "items": {}, "interactions": {}, "filtre": {}})
    )
    with pytest.raises(dataset.DataError, match="filtre"):
        dataset.load_dataset(tmp_path)


def test_timestamps():
    assert dataset.parse_timestamp("12.5") == 12.5
    assert dataset.parse_timestamp("1970-01-02") == 86400
    assert dataset.parse_timestamp("1970-01-01T01:00:00+01:00") == 0
    assert dataset.parse_timestamp("1970-01-01 00:00:01.25Z") == 1.25
    for bad in ("", "nan", "inf", "2020-02-30", "2020-1-1", "yesterday", "2020-01-01T25:00"):
        assert dataset.parse_timestamp(bad) is None, bad


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_ml100k_reexpressed_yields_the_same_split(catalog_split, tmp_path, fmt):
    from l2rec_train import reexpress

    catalog, split = catalog_split
    ds = dataset.load_dataset(reexpress.reexpress(tmp_path, fmt))
    catalog2, split2 = data.load(ds)
    assert catalog2.item_ids != [f"m{i}" for i in catalog.item_ids], "rows are reordered"

    def by_id(cat, sp, prefix=""):
        ids = cat.item_ids
        return {
            prefix + u: [ids[r] for r in [*sp.train[k], sp.valid[k], sp.test[k]]]
            for k, u in enumerate(sp.user_ids)
        }

    plain = by_id(catalog, split, "u")
    assert by_id(catalog2, split2) == {u: [f"m{i}" for i in s] for u, s in plain.items()}
    genres = data.load(ds, genres=True)[0]
    texts = dict(zip(genres.item_ids, genres.texts, strict=True))
    original = data.load(genres=True)[0]
    assert all(texts[f"m{i}"] == t for i, t in zip(original.item_ids, original.texts, strict=True))
    assert ds.config.prompts == dataset.DataConfig.load(None).prompts  # the same words


def test_a_config_speaks_of_the_items_in_its_datasets_words():
    from l2rec_train.config import Config
    from l2rec_train.context import adopt_dataset_prompts
    from l2rec_train.prompts import DEFAULT_TEMPLATES

    products = adopt_dataset_prompts(Config(data=str(GOLDEN / "csv-strings")))
    assert products.views["semantic"].template["prefix"].startswith("Products a shopper viewed")
    assert products.views["behavioral"].template["prefix"] == dataset.GENERIC_PREFIX
    nameless = adopt_dataset_prompts(Config(data=str(GOLDEN / "jsonl-lists")))
    assert nameless.views["semantic"].template["prefix"] == dataset.GENERIC_PREFIX
    chosen = Config(views={"semantic": {"template": {"prefix": "Books, oldest first:\n"}}})
    chosen.data = str(GOLDEN / "csv-strings")
    assert adopt_dataset_prompts(chosen).views["semantic"].template["prefix"].startswith("Books")
    ml100k = adopt_dataset_prompts(Config())  # its dataset.json says what the defaults say
    assert all(ml100k.views[v].template == DEFAULT_TEMPLATES[v] for v in ("behavioral", "semantic"))


def test_a_plain_install_carries_ml100k_config(tmp_path):
    """A wheel (not only an editable install) holds datasets/ml-100k/dataset.json, so
    `l2rec-train` finds the default dataset from any install."""
    import shutil
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("setuptools", reason="building a wheel offline needs setuptools")
    repo = GOLDEN.parents[1]
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".ruff_cache")
    shutil.copytree(repo / "train", tmp_path / "train", symlinks=True, ignore=ignore)
    shutil.copytree(repo / "datasets", tmp_path / "datasets")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + [str(tmp_path / "train"), "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        packed = z.read("l2rec_train/datasets/ml-100k/dataset.json")
    assert packed == (repo / "datasets" / "ml-100k" / "dataset.json").read_bytes()
