"""RecBole's own leave-one-out split of ml-100k is ours (needs recbole: scripts/baselines installs it)."""

import pytest

pytest.importorskip("recbole")
# RecBole passes torch tensors through numpy functions; numpy 2 deprecates how torch wraps the result.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


@pytest.mark.parametrize("model", ["BPR", "SASRec"])  # RecBole's general and sequential datasets
def test_recbole_split_is_ours(catalog_split, tmp_path, model):
    from l2rec_train import baselines

    catalog, split = catalog_split
    _, dataset, (_, valid, test) = baselines.build(model, baselines.recbole_config(model), tmp_path)
    assert baselines.split_mismatches(split, catalog, valid, "valid") == 0
    assert baselines.split_mismatches(split, catalog, test, "test") == 0
    baselines.Scorer(split, catalog, dataset)  # raises unless RecBole's items are the catalog's
