"""Where the assets live: the same cache `scripts/fetch-assets` fills."""

import os
from pathlib import Path

BACKBONE_FILE = "gemma-3-270m-q4_k_m.gguf"


def cache_dir() -> Path:
    """`$L2REC_CACHE`, else `$XDG_CACHE_HOME/l2rec`, else `~/.cache/l2rec`."""
    if os.environ.get("L2REC_CACHE"):
        return Path(os.environ["L2REC_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "l2rec"


def backbone_path() -> Path:
    return cache_dir() / "models" / BACKBONE_FILE


def data_dir() -> Path:
    return cache_dir() / "data" / "ml-100k"


def work_dir() -> Path:
    """Trainer-owned derived data (text states, lower-layer state caches)."""
    d = cache_dir() / "train"
    d.mkdir(parents=True, exist_ok=True)
    return d
