"""DeepCTR-Torch's DIN or DIEN trained on the samples `micn data export` wrote, at micn's
settings: prints one JSON line with its training samples/s and its test AUC.

Alone, it trains with DeepCTR-Torch's own `fit`. Under `torchrun --nproc_per_node N` (with
`--ddp`) it trains as a PyTorch DDP user would: the model wrapped in `DistributedDataParallel`
(gloo, CPU), each process a shard of every epoch (`DistributedSampler`) and a batch of
`--batch / N`, the gradients averaged over the processes each step; rank 0 prints the line.

Run by bench/peers/compare.sh and bench/peers/compare-ranks.sh, in the virtual environment they
make (DeepCTR-Torch is never a dependency of micn itself).
"""
import json
import os
import time

import numpy as np
import torch
from deepctr_torch.layers.activation import Dice
from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat, get_feature_names
from deepctr_torch.models import DIEN, DIN
from sklearn.metrics import roc_auc_score

from peer_common import arguments, load


def inputs(split, negatives):
    x = {
        "user": split["users"],
        "item": split["items"],
        "cat": split["cats"],
        "hist_item": split["hist_items"],
        "hist_cat": split["hist_cats"],
        "seq_length": split["hist_len"],
    }
    if negatives:
        x["neg_hist_item"] = split["noclick_items"]
        x["neg_hist_cat"] = split["noclick_cats"]
    return x


def main():
    p = arguments(__doc__)
    p.add_argument("--ddp", action="store_true", help="train under torchrun with DistributedDataParallel")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    meta = json.load(open(os.path.join(args.data, "export.json")))
    train, test = load(os.path.join(args.data, "train")), load(os.path.join(args.data, "test"))
    t = meta["max_hist_len"]
    pad = lambda a: np.pad(a, ((0, 0), (0, t - a.shape[1]))) if a.ndim == 2 else a
    train, test = ({k: pad(v) for k, v in split.items()} for split in (train, test))
    dien = args.model == "dien"

    def sparse(name, vocab, shared=None):
        return SparseFeat(name, vocabulary_size=meta[vocab], embedding_dim=args.dim, embedding_name=shared or name)

    def sequence(name, vocab, shared):
        return VarLenSparseFeat(sparse(name, vocab, shared), maxlen=t, length_name="seq_length")

    columns = [sparse("user", "users"), sparse("item", "items"), sparse("cat", "cats")]
    columns += [sequence("hist_item", "items", "item"), sequence("hist_cat", "cats", "cat")]
    if dien:
        columns += [sequence("neg_hist_item", "items", "item"), sequence("neg_hist_cat", "cats", "cat")]
    names = get_feature_names(columns)
    x_train = {k: v for k, v in inputs(train, dien).items() if k in names}
    x_test = {k: v for k, v in inputs(test, False).items() if k in names}
    if dien:
        # DeepCTR-Torch reads the no-click columns in evaluation too; they do not change its score.
        x_test["neg_hist_item"] = test["hist_items"]
        x_test["neg_hist_cat"] = test["hist_cats"]

    # micn's sizes (SPEC §2.2): attention 80-40, head 200-80 with Dice; no L2 (micn has none).
    common = dict(dnn_hidden_units=(200, 80), dnn_activation="dice", l2_reg_embedding=0.0, seed=args.seed)
    if dien:
        model = DIEN(columns, ["item", "cat"], gru_type="AUGRU", use_negsampling=True, alpha=1.0,
                     att_hidden_units=(80, 40), att_activation="sigmoid", **common)
    else:
        model = DIN(columns, ["item", "cat"], att_hidden_size=(80, 40), att_activation="sigmoid",
                    att_weight_normalization=True, **common)
    # DeepCTR-Torch builds the head's Dice for 3-D inputs (its DNN's default `dice_dim=3`), which
    # its DIN and DIEN feed 2-D: the head's Dice layers, for 2-D inputs as DIN's paper has them.
    model.dnn.activation_layers = torch.nn.ModuleList(Dice(h, dim=2) for h in common["dnn_hidden_units"])
    model.compile(torch.optim.Adam(model.parameters(), lr=args.lr), "binary_crossentropy")

    if args.ddp:
        seconds, world = fit_ddp(model, x_train, train["labels"], args)
        if torch.distributed.get_rank() != 0:
            return
    else:
        started = time.perf_counter()
        model.fit(x_train, train["labels"], batch_size=args.batch, epochs=args.epochs, verbose=0, shuffle=True)
        seconds, world = time.perf_counter() - started, 1
    scores = model.predict(x_test, batch_size=1024)
    print(json.dumps({
        "trainer": "deepctr-torch" + (" DDP" if args.ddp else ""),
        "model": args.model,
        "ranks": world,
        "epochs": args.epochs,
        "train_samples": int(len(train["labels"])),
        "samples_per_sec": len(train["labels"]) * args.epochs / seconds,
        "test_auc": float(roc_auc_score(test["labels"], scores)),
    }))


def fit_ddp(model, x, labels, args):
    """DeepCTR-Torch's `fit` step (summed log-loss plus DIEN's auxiliary loss, Adam) under
    DistributedDataParallel: returns the training seconds (every rank from one barrier to the
    next) and the number of processes."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} does not split into {world} equal shards")
    columns = [x[name] if x[name].ndim == 2 else x[name][:, None] for name in model.feature_index]
    data = TensorDataset(torch.from_numpy(np.concatenate(columns, axis=-1)), torch.from_numpy(labels))
    sampler = DistributedSampler(data, num_replicas=world, rank=dist.get_rank(), shuffle=True, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch // world, sampler=sampler)
    ddp = DistributedDataParallel(model.train())
    dist.barrier()
    started = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            y_pred = ddp(xb.float()).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy(y_pred, yb.float(), reduction="sum")
            model.optim.zero_grad()
            (loss + model.get_regularization_loss() + model.aux_loss).backward()
            model.optim.step()
    dist.barrier()
    return time.perf_counter() - started, world


if __name__ == "__main__":
    main()
