"""RecBole 1.2.1 baselines (Pop, BPR, GRU4Rec, SASRec) scored under our protocol.

    python -m l2rec_train.baselines [MODEL ...] [--out DIR] [--epochs N]

RecBole trains each model on its own leave-one-out split of ml-100k (the same
one as `data.py`: checked user by user before training). What differs from
RecBole's own evaluation is the ranking: RecBole's full sort of a sequential
model keeps the user's history in the ranking, ours removes it and breaks
ties by lower catalog row (`metrics.py`). So every number that a table puts
next to ours is computed here with `metrics.ranks` on full-catalog scores
from the model, and model selection (early stopping, best epoch) uses that
validation NDCG@10 too. RecBole's own validation and test numbers for the
selected model are kept for reference (`recbole_valid`, `recbole_test`); for
Pop and BPR (general models) RecBole excludes the history too, so those agree
with ours up to tie-breaking.

Writes `<out>/<MODEL>.json` per model and `<out>/baselines.json` with all of
them; prints the combined JSON. Runs on one CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

from . import data, metrics, paths

# RecBole's defaults for these models (properties/model/*.yaml) are kept, except
# what the protocol fixes and what the CPU budget forces: ~25 min for all four
# on one thread of a 2-core machine shared with a training run, where an epoch
# took BPR ~0.7 s, GRU4Rec ~75 s and SASRec ~150-210 s. The sequential models
# are capped at a few epochs (still improving there: `--epochs` runs longer) and
# train on batches of 256 instead of RecBole's 2048: 8x the updates per epoch
# for less time per epoch on this CPU (SASRec's paper used 128). Pop counts
# training items only: with RecBole's default negative sampling it would count
# the sampled negatives as well (and see `_pop_count`).
MODELS = {
    "Pop": {"train_neg_sample_args": None},
    "BPR": {},
    "GRU4Rec": {
        "epochs": 6,
        "stopping_step": 2,
        "train_batch_size": 256,
        "train_neg_sample_args": None,
        "loss_type": "CE",
    },
    "SASRec": {
        "epochs": 5,
        "stopping_step": 2,
        "train_batch_size": 256,
        "train_neg_sample_args": None,
        "loss_type": "CE",
    },
}

PROTOCOL = {
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
    "eval_args": {
        "split": {"LS": "valid_and_test"},
        "order": "TO",
        "group_by": "user",
        "mode": "full",
    },
    "MAX_ITEM_LIST_LENGTH": 50,
    "metrics": ["Hit", "NDCG"],
    "topk": list(metrics.KS),
    "valid_metric": "NDCG@10",
    "seed": 0,
    "reproducibility": True,
    "use_gpu": False,
    "gpu_id": "",
    "show_progress": False,
}


def _shim_recbole() -> None:
    """Let RecBole 1.2.1 import and run next to numpy 2 and without tensorboard; fix Pop.

    Its Config aliases removed numpy names (`np.float = np.float_`, ...) and its
    code then uses `np.float`; numpy 2 dropped `float_`, `complex_` and
    `unicode_`, so they are put back first. Its dataset code fills missing
    values through chained `inplace` calls that pandas 2.3 warns about on every
    field (ml-100k has no missing values). Its utils import
    `torch.utils.tensorboard` only to write training curves into ./log_tensorboard;
    a no-op writer keeps those files out of the tree and tensorboard (with
    grpc and protobuf) out of the venv.
    """
    for name, alias in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if name not in np.__dict__:
            setattr(np, name, alias)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")

    class SummaryWriter:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    stub = types.ModuleType("torch.utils.tensorboard")
    stub.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = stub
    from recbole.model.general_recommender.pop import Pop

    Pop.calculate_loss = _pop_count


def _pop_count(self, interaction):
    """Pop's training step, counting every interaction.

    RecBole 1.2.1's `item_cnt[item, :] = item_cnt[item, :] + 1` writes once per
    distinct item of a batch, so it counts the batches an item occurs in: on
    ml-100k 104 items tie at the maximum (48 batches) and the ranking is
    decided by tie-breaking. `index_add_` accumulates repeated indices.
    """
    item = interaction[self.ITEM_ID]
    self.item_cnt.index_add_(0, item, torch.ones_like(self.item_cnt[item]))
    self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
    return torch.nn.Parameter(torch.zeros(1)).to(self.device)


def recbole_config(model: str, epochs: int | None = None) -> dict:
    """The config dict passed to RecBole: the protocol, the model's overrides, our data dir."""
    cfg = {**PROTOCOL, **MODELS[model]}
    if epochs is not None:
        cfg["epochs"] = epochs
    cfg["data_path"] = str(paths.data_dir().parent)
    return cfg


def build(model: str, cfg: dict, out_dir: Path):
    """RecBole's config, dataset and (train, valid, test) loaders for `model`."""
    _shim_recbole()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    config = Config(
        model=model, dataset="ml-100k", config_dict={**cfg, "checkpoint_dir": str(out_dir)}
    )
    # Importing RecBole's models runs sine.py's `torch.autograd.set_detect_anomaly(True)`,
    # which checks every gradient for NaNs and records a stack per op: ~1.5x the training time.
    torch.autograd.set_detect_anomaly(False)
    dataset = create_dataset(config)
    return config, dataset, data_preparation(config, dataset)


def split_mismatches(split: data.Split, catalog: data.Catalog, loader, phase: str) -> int:
    """Users whose RecBole `phase` target differs from ours (or who are missing or doubled)."""
    ds = loader._dataset
    tok_user = ds.field2id_token[ds.uid_field]
    tok_item = ds.field2id_token[ds.iid_field]
    row = catalog.row_of()
    theirs: dict[str, list[int]] = {}
    for u, i in zip(
        ds.inter_feat[ds.uid_field].tolist(), ds.inter_feat[ds.iid_field].tolist(), strict=False
    ):
        theirs.setdefault(tok_user[u], []).append(row[tok_item[i]])
    ours = split.valid if phase == "valid" else split.test
    bad = sum(theirs.get(uid) != [int(ours[u])] for u, uid in enumerate(split.user_ids))
    return bad + len(set(theirs) - set(split.user_ids))


class Scorer:
    """Our metrics for a RecBole model: its full-sort scores mapped onto catalog rows."""

    def __init__(self, split: data.Split, catalog: data.Catalog, dataset):
        self.split = split
        self.user_row = {uid: u for u, uid in enumerate(split.user_ids)}
        self.uid_field = dataset.uid_field
        self.tok_user = dataset.field2id_token[dataset.uid_field]
        # RecBole's item column of each catalog row (column 0 is its padding item).
        col = {t: c for c, t in enumerate(dataset.field2id_token[dataset.iid_field])}
        missing = [t for t in catalog.item_ids if t not in col]
        if missing or len(col) != len(catalog) + 1:
            raise ValueError(
                f"RecBole's items differ from the catalog (missing e.g. {missing[:3]})"
            )
        self.columns = torch.tensor([col[t] for t in catalog.item_ids])

    @torch.no_grad()
    def __call__(self, model, loader, phase: str) -> dict[str, float]:
        """HR/NDCG@10/20 of `phase` over all users, earlier items excluded."""
        model.eval()
        targets = self.split.valid if phase == "valid" else self.split.test
        all_ranks = []
        for batch in loader:
            inter = batch[0]
            users = [self.user_row[self.tok_user[u]] for u in inter[self.uid_field].tolist()]
            scores = model.full_sort_predict(inter).view(len(users), -1)[:, self.columns]
            all_ranks.append(
                metrics.ranks(
                    scores,
                    torch.from_numpy(targets[users]),
                    exclude=[self.split.seen_items(u, phase) for u in users],
                )
            )
        ranks = torch.cat(all_ranks)
        if len(ranks) != len(self.split):
            raise ValueError(f"{phase}: scored {len(ranks)} users, expected {len(self.split)}")
        return metrics.from_ranks(ranks)


def protocol_trainer(base, scorer: Scorer):
    """`base` (RecBole's trainer class for the model) selecting on our validation NDCG@10.

    The best state is kept in memory instead of a checkpoint file: RecBole's
    reload goes through `torch.load`, which no longer unpickles its checkpoint
    (a Config object) under torch >= 2.6's weights_only default.
    """

    class ProtocolTrainer(base):
        def __init__(self, config, model):
            super().__init__(config, model)
            self.curve: list[float] = []  # our validation NDCG@10 after each epoch
            self.best_epoch = None
            self.best_state = None

        def _valid_epoch(self, valid_data, show_progress=False):
            result = scorer(self.model, valid_data, "valid")
            self.curve.append(result["NDCG@10"])
            return result["NDCG@10"], result

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            self.best_epoch = epoch
            self.best_state = (
                copy.deepcopy(self.model.state_dict()),
                copy.deepcopy(self.model.other_parameter()),
            )

        def restore_best(self):
            state, other = self.best_state
            self.model.load_state_dict(state)
            self.model.load_other_parameter(other)

    return ProtocolTrainer


def _recbole_numbers(result) -> dict[str, float]:
    """RecBole's `hit@10`, `ndcg@10`, ... under our names."""
    return {k.replace("hit", "HR").replace("ndcg", "NDCG"): float(v) for k, v in result.items()}


def run(model: str, out_dir: Path, epochs: int | None = None) -> dict:
    """Train `model` with RecBole, select on our validation NDCG@10, score valid and test."""
    _shim_recbole()
    from recbole.utils import get_model, get_trainer, init_seed

    cfg = recbole_config(model, epochs)
    config, dataset, (train_data, valid_data, test_data) = build(model, cfg, out_dir)
    catalog, split = data.load()
    mismatches = {
        p: split_mismatches(split, catalog, loader, p)
        for p, loader in (("valid", valid_data), ("test", test_data))
    }
    if any(mismatches.values()):
        raise ValueError(f"RecBole's split differs from data.load(): {mismatches} users")
    scorer = Scorer(split, catalog, dataset)

    init_seed(config["seed"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = protocol_trainer(get_trainer(config["MODEL_TYPE"], config["model"]), scorer)(
        config, net
    )
    start = time.time()
    trainer.fit(train_data, valid_data, verbose=True, saved=True)
    seconds = time.time() - start
    trainer.restore_best()
    return {
        "model": model,
        "valid": scorer(net, valid_data, "valid"),
        "test": scorer(net, test_data, "test"),
        "recbole_valid": _recbole_numbers(trainer.evaluate(valid_data, load_best_model=False)),
        "recbole_test": _recbole_numbers(trainer.evaluate(test_data, load_best_model=False)),
        "best_epoch": trainer.best_epoch,
        "epochs_run": len(trainer.train_loss_dict),
        "valid_ndcg10_by_epoch": trainer.curve,
        "train_seconds": round(seconds, 1),
        "split_mismatches": mismatches,
        "recbole_config": cfg,
        "command": shlex.join([sys.executable, "-m", "l2rec_train.baselines", *sys.argv[1:]]),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)"
    )
    p.add_argument("--out", type=Path, default=paths.cache_dir() / "runs" / "baselines")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="every model's epoch cap instead of MODELS' (Pop always counts once)",
    )
    args = p.parse_args(argv)
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    combined_path = args.out / "baselines.json"
    combined = json.loads(combined_path.read_text()) if combined_path.exists() else {}
    for model in args.models or MODELS:
        result = run(model, args.out, args.epochs)
        (args.out / f"{model}.json").write_text(json.dumps(result, indent=2) + "\n")
        combined[model] = result
        combined_path.write_text(json.dumps(combined, indent=2) + "\n")
    print(json.dumps(combined, indent=2))


if __name__ == "__main__":
    main()
