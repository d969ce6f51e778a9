"""torch-rechub's MIND beside micn's under ComiRec's protocol, for `bench/peers/comirec-protocol.sh`.

Trains torch-rechub 0.9.0's `MIND` (its capsule routing, L2-normalised vectors, label-aware
hard attention, list-wise softmax over sampled negatives, `MatchTrainer(mode=2)`) on the clicked
samples micn trained on (`micn data export` of the same dataset: each target with its last 20
items), then scores the held-out users as ComiRec's `evaluate_full` does: each user's interests
(from the first 80 % of its history by time, items looked up in the dataset's vocabulary as micn
looks them up) retrieve their top N over every item by inner product, merged by score; recall,
hit rate and ComiRec's NDCG at 20 and 50, with the model of the epoch whose validation recall@50
(the first held-out file's) is best, as ComiRec selects. Prints one JSON line per held-out file.

Settings are micn's: vectors of width 64, 4 interests, 3 routing iterations, history 20, batch
128, Adam lr 1e-3, 10 uniform negatives per sample (1,280 per batch), one thread. torch-rechub's
MIND keeps its `temperature` argument but never applies it (its logits are cosines in [-1, 1],
which a softmax over 11 candidates barely separates); this script divides them by 0.02, its
examples' value, as the documentation promises. Every user has the same (constant) user
feature: held-out users are unseen, as in ComiRec's MIND.

    python rechub_mind_peer.py --data DATASET --arrays EXPORT --heldout VALID TEST [--epochs 2 --seed 1]
"""
import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch_rechub.basic.features import SequenceFeature, SparseFeature
from torch_rechub.models.matching import MIND
from torch_rechub.trainers import MatchTrainer

WIDTH, INTERESTS, HISTORY, NEGATIVES, TEMPERATURE = 64, 4, 20, 10, 0.02


class Samples(Dataset):
    """Clicked samples with fresh uniform negatives per epoch (ids 1..items-1)."""

    def __init__(self, hist, items, n_items, seed):
        self.hist, self.items, self.n_items = hist, items, n_items
        self.rng = np.random.default_rng(seed)
        self.draw()

    def draw(self):
        self.negatives = self.rng.integers(1, self.n_items, size=(len(self.items), NEGATIVES))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        x = {"constant": 0, "item_id": self.items[i], "hist_item_id": self.hist[i], "neg_items": self.negatives[i]}
        return x, 0


class Tempered(MIND):
    """torch-rechub's MIND with its documented temperature applied to the training logits."""

    def forward(self, x):
        y = super().forward(x)
        return y if self.mode is not None else y / TEMPERATURE


def read_heldout(path, names):
    """ComiRec's held-out users: `user,item,time` lines (first 80 % by time seen) or
    `user_id:… hist_item:… eval_item:…` lines; unknown history items dropped, unknown items to
    retrieve kept as -1 (never found)."""
    users, order = {}, []
    split = []
    for line in open(path):
        if not line.strip():
            continue
        if line.startswith("user_id:"):
            tokens = [t.split(":", 1) for t in line.split()]
            split.append(([v for k, v in tokens if k == "hist_item"], [v for k, v in tokens if k == "eval_item"]))
            continue
        user, item, t = line.strip().split(",")
        if user not in users:
            users[user] = []
            order.append(user)
        users[user].append((int(t), len(users[user]), item))
    for user in order:
        items = [item for _, _, item in sorted(users[user])]
        k = int(len(items) * 0.8)
        split.append((items[:k], items[k:]))
    return [([names[i] for i in seen if i in names][-HISTORY:], [names.get(i, -1) for i in rest]) for seen, rest in split]


def comirec_metrics(lists, n):
    recall = hits = ndcg = 0.0
    for found, truth in lists:
        found = set(found[:n])
        count, dcg = 0, 0.0
        for no, item in enumerate(truth):
            if item in found:
                count += 1
                dcg += 1.0 / math.log2(no + 2)
        recall += count / len(truth)
        if count:
            hits += 1
            ndcg += dcg / sum(1.0 / math.log2(no + 2) for no in range(count))
    u = len(lists)
    return {"n": n, "recall": recall / u, "hit_rate": hits / u, "ndcg_comirec": ndcg / u, "users": u}


@torch.no_grad()
def retrieve(model, users, n_items, top=50):
    model.mode = "item"
    items = model({"item_id": torch.arange(n_items)})  # [I, D]
    model.mode = "user"
    lists = []
    for hist, _ in users:
        if not hist:
            lists.append([])
            continue
        padded = torch.tensor([hist + [0] * (HISTORY - len(hist))])
        interests = model({"constant": torch.zeros(1, dtype=torch.long), "hist_item_id": padded})[0]  # [K, D]
        pairs = []
        for v in interests:
            scores = items @ v
            scores[0] = -math.inf
            values, ids = scores.topk(top)
            pairs += list(zip(ids.tolist(), values.tolist()))
        merged = []
        for item, _ in sorted(pairs, key=lambda p: (-p[1], p[0])):
            if item not in merged:
                merged.append(item)
        lists.append(merged[:top])
    model.mode = None
    return lists


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--arrays", required=True)
    p.add_argument("--heldout", nargs="+", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    names = {}
    for i, line in enumerate(open(Path(a.data) / "items.tsv")):
        if i:
            names[line.split("\t")[0]] = i
    n_items = len(names) + 1
    train = Path(a.arrays) / "train"
    labels, targets = np.load(train / "labels.npy"), np.load(train / "items.npy")
    clicked = (labels > 0.5) & (targets > 0)
    hist = np.load(train / "hist_items.npy")[clicked]
    hist = np.pad(hist, ((0, 0), (0, HISTORY - hist.shape[1]))) if hist.shape[1] < HISTORY else hist[:, :HISTORY]
    samples = Samples(hist.astype(np.int64), targets[clicked].astype(np.int64), n_items, a.seed)

    item = SparseFeature("item_id", vocab_size=n_items, embed_dim=WIDTH)
    model = Tempered(
        [SparseFeature("constant", vocab_size=1, embed_dim=WIDTH)],
        [SequenceFeature("hist_item_id", vocab_size=n_items, embed_dim=WIDTH, pooling="concat", shared_with="item_id")],
        [item],
        [SequenceFeature("neg_items", vocab_size=n_items, embed_dim=WIDTH, pooling="concat", shared_with="item_id")],
        max_length=HISTORY,
        temperature=TEMPERATURE,
        interest_num=INTERESTS,
    )
    trainer = MatchTrainer(model, mode=2, optimizer_params={"lr": 1e-3, "weight_decay": 0.0}, n_epoch=a.epochs,
                           device="cpu", model_path=str(Path(a.arrays) / "rechub-model"))
    heldout = [(path, read_heldout(path, names)) for path in a.heldout]

    def recall_50(users):
        lists = retrieve(model, users, n_items)
        return comirec_metrics([(found, truth) for found, (_, truth) in zip(lists, users)], 50)["recall"]

    # ComiRec's selection: the model of the epoch with the best validation recall@50 (the first
    # held-out file), as micn's runs are selected by comirec-protocol.sh.
    seconds, best = 0.0, (-1.0, 0, None)
    for epoch in range(1, a.epochs + 1):
        started = time.perf_counter()
        samples.draw()
        loader = DataLoader(samples, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(a.seed))
        trainer.train_one_epoch(loader, log_interval=10**9)
        seconds += time.perf_counter() - started
        model.eval()
        recall = recall_50(heldout[0][1])
        if recall > best[0]:
            best = (recall, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    for path, users in heldout:
        lists = retrieve(model, users, n_items)
        pairs = [(found, truth) for found, (_, truth) in zip(lists, users)]
        print(json.dumps({"trainer": "torch-rechub", "file": path, "users": len(users), "seconds": seconds,
                          "clicked_per_sec": len(samples) * a.epochs / seconds, "selected_epoch": best[1],
                          "model": [comirec_metrics(pairs, n) for n in (20, 50)]}))


if __name__ == "__main__":
    main()
