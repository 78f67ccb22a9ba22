"""RecBole's sequential protocol on the real ml-100k files."""

import numpy as np

from l2rec_train import data, paths


def test_counts_and_catalog(catalog_split):
    catalog, split = catalog_split
    assert len(catalog) == 1682 and len(split) == 943
    assert catalog.item_ids[0] == "1" and catalog.texts[0] == "Toy Story (1995)"
    total = sum(len(t) + 2 for t in split.train)
    assert total == 100_000  # every rating is an interaction, nothing filtered


def test_leave_one_out_matches_recbole_order(catalog_split):
    catalog, split = catalog_split
    # Independent restatement from the raw file: per user, stable order of (float32 key,
    # file position).
    lines = (paths.data_dir() / "ml-100k.inter").read_text().splitlines()[1:]
    users, items, ts = zip(
        *((c[0], c[1], float(c[3])) for c in (ln.split("\t") for ln in lines)), strict=True
    )
    row = catalog.row_of()
    key = data.recbole_time_key(np.array(ts))
    per_user = {}
    for pos in range(len(users)):
        per_user.setdefault(users[pos], []).append((key[pos], pos, row[items[pos]]))
    for u, uid in enumerate(split.user_ids):
        seq = [r for _, _, r in sorted(per_user[uid])]
        assert seq[:-2] == split.train[u].tolist()
        assert seq[-2] == split.valid[u] and seq[-1] == split.test[u]


def test_float32_key_makes_ties_that_keep_file_order():
    # Two timestamps a second apart near the top of the range collapse in float32:
    # RecBole then keeps file order, so the later-in-file, earlier-in-time item comes last.
    ts = np.array([0.0, 893286638.0, 893286637.0])
    key = data.recbole_time_key(ts)
    assert key[1] == key[2]
    split = data.leave_one_out(["1", "1", "1"], [10, 11, 12], ts)
    assert split.valid[0] == 11 and split.test[0] == 12  # raw timestamps would give 12, 11


def test_histories_and_windows(catalog_split):
    _, split = catalog_split
    u = int(np.argmax([len(t) for t in split.train]))
    train = split.train[u]
    assert np.array_equal(split.test_history(u)[:-1], train)
    assert len(data.truncate(split.test_history(u), 50)) == 50
    last = data.training_windows(train, 50, "last")
    assert len(last) == 1 and np.array_equal(last[0], train[-50:])
    wins = data.training_windows(train, 50, "all")
    assert np.array_equal(wins[-1], train[-50:])  # the validation prompt is the last window
    assert all(2 <= len(w) <= 50 for w in wins)
    targets = np.concatenate([w[1:] for w in wins])
    assert np.array_equal(targets, train[1:])  # every item but the first is a target exactly once
