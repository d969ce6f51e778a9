"""What the peers of bench/peers/compare.sh share: their command line (micn's settings as
defaults) and the samples `micn data export` wrote."""
import argparse
import os

import numpy as np


def arguments(description):
    """The peers' options: the export to read, the model, and micn's settings."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="the directory `micn data export` wrote")
    p.add_argument("--model", choices=["din", "dien"], required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=18)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    return p


def load(split_dir):
    """One split's arrays, by name."""
    return {name[:-4]: np.load(os.path.join(split_dir, name)) for name in os.listdir(split_dir) if name.endswith(".npy")}
