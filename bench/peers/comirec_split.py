"""ComiRec's user split of a sequences file, for `bench/peers/comirec-protocol.sh`.

Reads `user item item …` lines (time-ordered, as S3-Rec and RecBole ship Amazon data) and writes
what ComiRec's `preprocess/data.py` writes from raw reviews: items seen at least 5 times renumbered
1, 2, … by descending count, users with at least 5 such items, shuffled with Python's
`random.seed(1230)` and cut 80 % / 10 % / 10 % into `NAME_train.txt`, `NAME_valid.txt` and
`NAME_test.txt`, one `user,item,time` line per interaction (`time` the position in the user's
history). Standard library only.

    python3 comirec_split.py SEQUENCES.txt OUT_DIR NAME
"""
import random
import sys
from collections import Counter
from pathlib import Path


def main(sequences: str, out_dir: str, name: str, min_count: int = 5) -> None:
    histories = {}
    for number, line in enumerate(open(sequences, encoding="utf-8"), 1):
        tokens = line.split()
        if len(tokens) < 2:
            sys.exit(f"{sequences}:{number}: expected `user item item …`")
        histories.setdefault(tokens[0], []).extend(tokens[1:])
    counts = Counter(item for items in histories.values() for item in items)
    ranked = sorted((item for item, c in counts.items() if c >= min_count), key=lambda i: -counts[i])
    item_id = {item: k + 1 for k, item in enumerate(ranked)}
    users = [u for u, items in histories.items() if sum(i in item_id for i in items) >= min_count]
    random.seed(1230)
    random.shuffle(users)
    cut_1, cut_2 = int(len(users) * 0.8), int(len(users) * 0.9)
    parts = {"train": users[:cut_1], "valid": users[cut_1:cut_2], "test": users[cut_2:]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    user_id = {u: k for k, u in enumerate(users)}
    for part, members in parts.items():
        lines = []
        for u in members:
            kept = [i for i in histories[u] if i in item_id]
            lines += [f"{user_id[u]},{item_id[i]},{t}\n" for t, i in enumerate(kept)]
        (out / f"{name}_{part}.txt").write_text("".join(lines))
        print(f"{name}_{part}.txt: {len(members)} users, {len(lines)} interactions")
    print(f"{len(item_id)} items")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
