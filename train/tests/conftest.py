"""Shared fixtures. Tests that need the real assets (scripts/fetch-assets) skip without them."""

import pytest
import torch

from l2rec_train import paths

torch.set_num_threads(1)


def _need(path):
    if not path.exists():
        pytest.skip(f"{path} missing: run scripts/fetch-assets")


@pytest.fixture(scope="session")
def catalog_split():
    from l2rec_train import data

    _need(paths.data_dir() / "ml-100k.inter")
    return data.load()


@pytest.fixture(scope="session")
def tokenizer():
    from l2rec_train.tokenizer import Tokenizer

    _need(paths.backbone_path())
    return Tokenizer.load()


@pytest.fixture(scope="session")
def backbone():
    from l2rec_train.backbone import Backbone

    _need(paths.backbone_path())
    return Backbone()
