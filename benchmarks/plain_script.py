"""The floor every medimg model must beat: a plain PyTorch script on PneumoniaMNIST.

Three conv blocks, AdamW, 10 epochs, best epoch by validation AUC, threshold 0.5, no
augmentation, no platform. Prints one JSON line: test AUC, ACC and wall seconds.
Usage: python benchmarks/plain_script.py [path/to/pneumoniamnist.npz]
"""

import json
import os
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

started = time.perf_counter()
path = (
    sys.argv[1]
    if len(sys.argv) > 1
    else os.path.join(os.environ.get("MEDIMG_DATA_DIR", "../shared/data"), "pneumoniamnist", "pneumoniamnist.npz")
)
d = np.load(path)
torch.manual_seed(0)


def tensors(split):
    x = torch.tensor(d[f"{split}_images"], dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - 0.5) / 0.5, torch.tensor(d[f"{split}_labels"].reshape(-1), dtype=torch.long)


(xt, yt), (xv, yv), (xs, ys) = tensors("train"), tensors("val"), tensors("test")


def block(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))


model = nn.Sequential(
    block(1, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 2)
)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()


def probs(x):
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(x), 1)[:, 1].numpy()


best_auc, best_state = -1.0, None
for _epoch in range(10):
    model.train()
    for idx in torch.randperm(len(xt)).split(128):
        opt.zero_grad()
        loss_fn(model(xt[idx]), yt[idx]).backward()
        opt.step()
    auc = roc_auc_score(yv.numpy(), probs(xv))
    if auc > best_auc:
        best_auc, best_state = auc, {k: v.clone() for k, v in model.state_dict().items()}
model.load_state_dict(best_state)
p = probs(xs)
print(
    json.dumps(
        {
            "script": "plain",
            "test_auc": round(float(roc_auc_score(ys.numpy(), p)), 4),
            "test_acc": round(float(((p >= 0.5) == ys.numpy()).mean()), 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
)
