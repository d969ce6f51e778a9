"""What the peers of bench/peers/compare.sh share: their command line (micn's settings as
defaults) and the samples `micn data export` wrote."""
import argparse
import os

import numpy as np


def positive(kind):
    """An argparse type: a number of `kind` above zero (an epoch count of 0 trained nothing and
    divided the samples/s it reports by a time of nothing)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value

    return parse


def arguments(description):
    """The peers' options: the export to read, the model, and micn's settings."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="the directory `micn data export` wrote")
    p.add_argument("--model", choices=["din", "dien"], required=True)
    p.add_argument("--epochs", type=positive(int), default=2)
    p.add_argument("--batch", type=positive(int), default=128)
    p.add_argument("--lr", type=positive(float), default=1e-3)
    p.add_argument("--dim", type=positive(int), default=18)
    p.add_argument("--threads", type=positive(int), default=1)
    p.add_argument("--seed", type=int, default=1)
    return p


def load(split_dir):
    """One split's arrays, by name."""
    return {name[:-4]: np.load(os.path.join(split_dir, name)) for name in os.listdir(split_dir) if name.endswith(".npy")}
