"""Evaluates a checkpoint under the protocol: HR@10, NDCG@10, HR@20, NDCG@20.

    python -m l2rec_train.eval --checkpoint runs/small/best.pt --phase test
    python -m l2rec_train.eval --checkpoint ... --phi mean        # gate without personalization
    python -m l2rec_train.eval --checkpoint ... --exclude none    # RecBole's sequential ranking

Prints one JSON object. Works under torchrun too (users are sharded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import distributed as dist_util
from .context import load_for_inference
from .device import backend, resolve_or_exit
from .train import evaluate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--phase", choices=["valid", "test"], default="test")
    p.add_argument(
        "--phi",
        choices=["user", "mean"],
        default="user",
        help="user: each user's trained phi; mean: phi_mean for everyone",
    )
    p.add_argument(
        "--exclude",
        choices=["history", "none"],
        default="history",
        help="remove the user's earlier items from the ranking (history) or not (none)",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--ranks", default=None, help="also write the per-user target ranks (.npy) here")
    args = p.parse_args(argv)
    dist_util.init(backend(resolve_or_exit(args.device)))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ctx = load_for_inference(Path(args.checkpoint), on=args.device)
    result, ranks = evaluate(ctx, args.phase, phi=args.phi, exclude=args.exclude)
    if dist_util.rank() == 0:
        if args.ranks:
            import numpy as np

            np.save(args.ranks, ranks)
        print(
            json.dumps(
                {
                    "phase": args.phase,
                    "phi": args.phi,
                    "exclude": args.exclude,
                    "users": len(ranks),
                    **result,
                }
            )
        )
    dist_util.shutdown()


if __name__ == "__main__":
    main()
