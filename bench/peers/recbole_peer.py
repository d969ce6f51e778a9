"""RecBole's DIN or DIEN trained on the samples `micn data export` wrote, at micn's settings, by
RecBole's own data loader and trainer: prints one JSON line with its training samples/s and its
test AUC.

The samples reach RecBole as its benchmark atomic files (`benchmark_filename`): one row per
sample with its label and its history as `item_id_list` (DIEN: micn's no-click draws as
`neg_item_id_list`), each item's category in the `.item` file, which RecBole's DIN and DIEN embed
beside the item as micn's do (an item micn's vocabulary lacks, id 0, is one token to RecBole,
which gives it one category: micn and DeepCTR-Torch see such a sample's own category). RecBole
builds both models' attention and head from one `mlp_hidden_size` (here micn's head, 200-80) with
batch norm in the head, and its DIEN (not its DIN) feeds the user's embedding to the head; that
is RecBole's model, kept as it is. Evaluation is RecBole's `labeled` mode: the AUC of every test
sample's score.

Run by bench/peers/compare.sh in the virtual environment it makes (RecBole is never a dependency
of micn itself).
"""
import json
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from peer_common import arguments, load


def write_inter(path, split, dien, negatives):
    """One benchmark file: `user_id item_id label item_id_list [neg_item_id_list]` per sample,
    ids as micn numbered them (RecBole renumbers tokens itself)."""
    columns = ["user_id:token", "item_id:token", "label:float", "item_id_list:token_seq"]
    if dien:
        columns.append("neg_item_id_list:token_seq")
    with open(path, "w") as f:
        f.write("\t".join(columns) + "\n")
        for i in range(len(split["labels"])):
            n = int(split["hist_len"][i])
            history = " ".join(map(str, split["hist_items"][i, :n]))
            row = [str(split["users"][i]), str(split["items"][i]), str(float(split["labels"][i])), history]
            if dien:
                # Evaluation reads the no-click column too; it does not change the score.
                drawn = split[negatives][i, :n]
                row.append(" ".join(map(str, drawn)))
            f.write("\t".join(row) + "\n")


def write_items(path, splits):
    """Each item's category (`item_id cat`), from every sample's target, history and no-click
    draws (the first seen where one is given twice: only id 0 is)."""
    cat_of = {}
    for split in splits:
        shown = np.arange(split["hist_items"].shape[1])[None, :] < split["hist_len"][:, None]
        pairs = [(split["items"], split["cats"]), (split["hist_items"][shown], split["hist_cats"][shown])]
        if "noclick_items" in split:
            pairs.append((split["noclick_items"][shown], split["noclick_cats"][shown]))
        for items, cats in pairs:
            for item, cat in zip(items.tolist(), cats.tolist()):
                cat_of.setdefault(item, cat)
    with open(path, "w") as f:
        f.write("item_id:token\tcat:token\n")
        for item, cat in sorted(cat_of.items()):
            f.write(f"{item}\t{cat}\n")


def main():
    p = arguments(__doc__)
    args = p.parse_args()
    # RecBole reads the command line as its own settings, and warns of pandas' deprecations.
    sys.argv = sys.argv[:1]
    warnings.simplefilter("ignore")

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import DIEN, DIN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    meta = json.load(open(os.path.join(args.data, "export.json")))
    train, test = load(os.path.join(args.data, "train")), load(os.path.join(args.data, "test"))
    dien = args.model == "dien"
    with tempfile.TemporaryDirectory() as tmp:
        # RecBole writes its logs and TensorBoard events under the working directory.
        os.chdir(tmp)
        os.makedirs(os.path.join(tmp, "micn"))
        write_inter(os.path.join(tmp, "micn", "micn.train.inter"), train, dien, "noclick_items")
        write_inter(os.path.join(tmp, "micn", "micn.test.inter"), test, dien, "hist_items")
        write_items(os.path.join(tmp, "micn", "micn.item"), [train, test])
        inter = ["user_id", "item_id", "label", "item_id_list"] + (["neg_item_id_list"] if dien else [])
        config = Config(
            model="DIEN" if dien else "DIN",
            dataset="micn",
            config_dict={
                "data_path": tmp,
                "checkpoint_dir": tmp,
                "benchmark_filename": ["train", "test", "test"],
                "load_col": {"inter": inter, "item": ["item_id", "cat"]},
                # Every sample is kept where its file put it (RecBole would drop rows of items
                # the .item file lacks, then cut the splits by the files' first sizes).
                "filter_inter_by_user_or_item": False,
                "alias_of_item_id": inter[3:],
                "LABEL_FIELD": "label",
                "TIME_FIELD": None,
                "MAX_ITEM_LIST_LENGTH": meta["max_hist_len"],
                "train_neg_sample_args": None,
                "eval_args": {"mode": "labeled", "order": "TO", "group_by": None},
                "metrics": ["AUC"],
                "valid_metric": "AUC",
                "epochs": args.epochs,
                "train_batch_size": args.batch,
                "eval_batch_size": 1024,
                "learner": "adam",
                "learning_rate": args.lr,
                "weight_decay": 0.0,
                "embedding_size": args.dim,
                "mlp_hidden_size": [200, 80],
                "dropout_prob": 0.0,
                "seed": args.seed,
                "reproducibility": True,
                "use_gpu": False,
                "show_progress": False,
                "state": "ERROR",
                "shuffle": True,
            },
        )
        logging.getLogger().setLevel(logging.ERROR)
        init_seed(config["seed"], config["reproducibility"])
        torch.set_num_threads(args.threads)
        dataset = create_dataset(config)
        train_data, _, test_data = data_preparation(config, dataset)
        for name, split, data in (("train", train, train_data), ("test", test, test_data)):
            if len(data.dataset) != len(split["labels"]):
                raise SystemExit(f"RecBole holds {len(data.dataset)} {name} samples of {len(split['labels'])}")
        model = (DIEN if dien else DIN)(config, train_data.dataset).to(config["device"])
        trainer = Trainer(config, model)
        started = time.perf_counter()
        trainer.fit(train_data, None, saved=False, show_progress=False)
        seconds = time.perf_counter() - started
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    print(json.dumps({
        "trainer": "recbole",
        "model": args.model,
        "ranks": 1,
        "epochs": args.epochs,
        "train_samples": int(len(train["labels"])),
        "samples_per_sec": len(train["labels"]) * args.epochs / seconds,
        "test_auc": float(result["auc"]),
    }))


if __name__ == "__main__":
    main()
