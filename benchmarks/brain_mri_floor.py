"""The floor medimg must beat on the 4-class brain tumour MRI folder: a plain PyTorch script.

Pillow decode (grey, stretched to 64 x 64 px, bilinear), four conv blocks, AdamW, 15 epochs,
no augmentation, no platform; best epoch by validation macro one-vs-rest ROC AUC; test macro
AUC (``roc_auc_score(multi_class="ovr", average="macro")``) and arg-max accuracy.
Split: stratified 70/15/15 by :func:`stratified_split` (the rule ``params/brain_mri.yaml`` uses).
Prints one JSON line: test macro AUC, accuracy, best epoch and wall seconds (decode included).
Usage, from the repo root: MEDIMG_DATA_DIR=/work/shared/data python benchmarks/brain_mri_floor.py [folder] [--threads N]
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from medimg.data.splitting import stratified_split

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
SIZE = 64
EPOCHS = 15


def block(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("MEDIMG_DATA_DIR", "../shared/data")) / "brain_tumor_mri"
    parser.add_argument("folder", nargs="?", type=Path, default=default)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    keys, labels = [], []
    for index, name in enumerate(CLASSES):
        for path in sorted((args.folder / name).glob("*.jpg")):
            keys.append(path.relative_to(args.folder).as_posix())
            labels.append(index)
    split = stratified_split(keys, labels, {"train": 0.70, "val": 0.15, "test": 0.15}, seed=42)
    label_of = dict(zip(keys, labels, strict=True))

    def tensors(name):
        chosen = sorted(k for k, s in split.items() if s == name)
        images = []
        for key in chosen:
            with Image.open(args.folder / key) as image:
                images.append(np.asarray(image.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)))
        x = torch.tensor(np.stack(images), dtype=torch.float32).unsqueeze(1) / 255.0
        return (x - 0.5) / 0.5, torch.tensor([label_of[k] for k in chosen], dtype=torch.long)

    (xt, yt), (xv, yv), (xs, ys) = tensors("train"), tensors("val"), tensors("test")
    torch.manual_seed(0)
    model = nn.Sequential(
        block(1, 32),
        block(32, 64),
        block(64, 128),
        block(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, len(CLASSES)),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def probs(x):
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(x), 1).numpy().astype(np.float64)

    best_auc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, EPOCHS + 1):
        model.train()
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        auc = roc_auc_score(yv.numpy(), probs(xv), multi_class="ovr", average="macro")
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    p = probs(xs)
    print(
        json.dumps(
            {
                "script": "brain_mri_floor",
                "split": {"train": len(yt), "val": len(yv), "test": len(ys)},
                "best_epoch": best_epoch,
                "val_macro_auc": round(float(best_auc), 4),
                "test_macro_auc": round(float(roc_auc_score(ys.numpy(), p, multi_class="ovr", average="macro")), 4),
                "test_acc": round(float((p.argmax(1) == ys.numpy()).mean()), 4),
                "threads": args.threads,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
