"""The baselines' own pieces (seqrec.py): BERT4Rec's cloze batches and serving input."""

import numpy as np
import torch

from l2rec_train.seqrec import BERT4Rec, left_pad, training_pairs


def test_cloze_masks_real_items_only_and_targets_them():
    model = BERT4Rec(n_items=30, d=8, max_len=6, blocks=1, heads=1, dropout=0.0)
    y = left_pad([np.array([3, 4, 5, 6, 7, 8]), np.array([1, 2])], 6) - 1  # rows; -1 = pad
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        inputs, targets = model.cloze(torch.zeros_like(y), y, gen)
        masked = inputs == model.mask_id
        assert masked.any(1).all(), "every window predicts something"
        assert not (masked & (y < 0)).any(), "padding is never masked"
        assert torch.equal(targets[masked], y[masked]) and (targets[~masked] == -1).all()
        assert torch.equal(inputs[~masked & (y >= 0)], y[~masked & (y >= 0)] + 1)


def test_serving_reads_a_mask_after_the_history():
    model = BERT4Rec(n_items=30, d=8, max_len=4, blocks=1, heads=1, dropout=0.0).eval()
    hist = [np.array([0, 1, 2, 3, 4]), np.array([9])]
    with torch.no_grad():
        h = model.last_state(hist, 4)
        seq = torch.tensor([[3, 4, 5, model.mask_id], [0, 0, 10, model.mask_id]])
        assert torch.allclose(h, model(seq)[:, -1])


def test_training_pairs_are_next_items():
    class Split:
        train = [np.array([5, 6, 7, 8])]

    x, y = training_pairs(Split(), max_len=3)
    assert x.tolist() == [[6, 7, 8]] and y.tolist() == [[6, 7, 8]]
