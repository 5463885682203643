#!/usr/bin/env python3
"""Dev-only: `train fit`'s recipe re-done in plain PyTorch, to tell the recipe's and the data's
limits apart from the Rust trainer's.

Python because the reference it trains is PyTorch's.

Same model as scripts/bench_train_pytorch.py; same data handling as `train fit` (class folders
read from the .tar.gz, training mean/std, zero-pad-4 random crop and horizontal flip per image
on the tensor side, last batch of one dropped); same optimiser (SGD, Nesterov momentum 0.9,
weight decay on conv/linear weights only, label smoothing 0.1); the same warm-up-cosine or
one-cycle learning rate formula per step (train/src/optim.rs); float16 autocast with a
gradient scaler and channels-last on CUDA; evaluation every epoch, with flip test-time
augmentation (mean of the logits of an image and its mirror image) if asked.

    python3 scripts/train_reference_pytorch.py --data cifar10-jpg.tar.gz --epochs 70 \\
        --batch-size 256 --lr 0.2 --schedule warmup-cosine --flip-tta --metrics ref.jsonl

Writes one JSON line per epoch with `train fit`'s metrics.jsonl keys.
"""

import argparse
import io
import json
import math
import sys
import tarfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench_train_pytorch import ResNet18


def load(path):
    splits = {"train": {}, "test": {}}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile() or not m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            parts = m.name.split("/")
            split, cls = parts[-3], parts[-2]
            if split in splits:
                data = tar.extractfile(m).read()
                splits[split].setdefault(cls, []).append((m.name, data))
    classes = sorted(splits["train"])
    out = {}
    for split, by_class in splits.items():
        images, labels = [], []
        for label, cls in enumerate(classes):
            for _, data in sorted(by_class.get(cls, [])):
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                labels.append(label)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out[split] = (x, torch.tensor(labels))
    return classes, out


def crop_flip(x, pad=4):
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(2 * pad + 1, (b, 1), device=dev)
    dx = torch.randint(2 * pad + 1, (b, 1), device=dev)
    flip = torch.randint(2, (b, 1), device=dev).bool()
    rows = dy + torch.arange(h, device=dev).view(1, h)
    cols_fwd = torch.arange(w, device=dev).view(1, w)
    cols = torch.where(flip, cols_fwd.flip(1), cols_fwd) + dx
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def lr_at(step, total, peak, schedule, warmup_steps):
    step = min(step, total)
    if schedule == "one-cycle":
        warmup_steps, start, end = round(total * 0.3), peak / 25.0, peak / 1e4
    else:
        start, end = 0.0, 0.0
    if step < warmup_steps:
        return start + (peak - start) * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(total - warmup_steps, 1)
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--schedule", choices=["one-cycle", "warmup-cosine"], default="one-cycle")
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flip-tta", action="store_true")
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--metrics", required=True, help="metrics.jsonl to write")
    args = p.parse_args()

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    t = time.time()
    classes, data = load(args.data)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    if args.limit_train:
        idx = torch.randperm(len(xtr))[: args.limit_train]
        xtr, ytr = xtr[idx], ytr[idx]
    if args.limit_test:
        idx = torch.randperm(len(xte))[: args.limit_test]
        xte, yte = xte[idx], yte[idx]
    pix = xtr.double() / 255.0
    mean = pix.mean(dim=(0, 2, 3)).float().view(1, 3, 1, 1).to(dev)
    std = pix.std(dim=(0, 2, 3), unbiased=False).float().view(1, 3, 1, 1).to(dev)
    del pix
    xtr, ytr, xte, yte = xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev)
    print(f"loaded {args.data}: {classes}, train {len(xtr)}, test {len(xte)}, {time.time() - t:.1f} s", flush=True)

    model = ResNet18(args.width, len(classes)).to(dev)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=fmt)
    named = list(model.named_parameters())
    decays = lambda n: n.endswith(".weight") and ".bn." not in n  # noqa: E731
    opt = torch.optim.SGD(
        [
            {"params": [q for n, q in named if decays(n)], "weight_decay": args.weight_decay},
            {"params": [q for n, q in named if not decays(n)], "weight_decay": 0.0},
        ],
        lr=0.0,
        momentum=0.9,
        nesterov=True,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    n = len(xtr)
    steps = n // args.batch_size + (1 if n % args.batch_size >= 2 else 0)
    total = steps * args.epochs
    warmup_steps = round(args.warmup_epochs * steps)
    prep = lambda x: ((x.float() / 255.0 - mean) / std).contiguous(memory_format=fmt)  # noqa: E731

    elapsed = 0.0
    with open(args.metrics, "w") as out:
        for epoch in range(args.epochs):
            t0 = time.time()
            model.train()
            order = torch.randperm(n, device=dev)
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            seen = 0
            for i in range(steps):
                idx = order[i * args.batch_size : (i + 1) * args.batch_size]
                lr = lr_at(epoch * steps + i, total, args.lr, args.schedule, warmup_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                x = prep(crop_flip(xtr[idx]))
                y = ytr[idx]
                with torch.autocast(dev.type, dtype=torch.float16, enabled=cuda):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(-1) == y).sum()
                seen += len(idx)
            if cuda:
                torch.cuda.synchronize()
            train_s = time.time() - t0
            model.eval()
            test_loss = torch.zeros((), device=dev)
            test_correct = torch.zeros((), device=dev, dtype=torch.long)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16, enabled=cuda):
                for s in range(0, len(xte), 512):
                    x = prep(xte[s : s + 512])
                    logits = model(x).float()
                    if args.flip_tta:
                        logits = (logits + model(x.flip(3)).float()) / 2
                    y = yte[s : s + 512]
                    test_loss += F.cross_entropy(logits, y, reduction="sum")
                    test_correct += (logits.argmax(-1) == y).sum()
            epoch_s = time.time() - t0
            elapsed += epoch_s
            m = {
                "epoch": epoch + 1,
                "train_loss": loss_sum.item() / seen,
                "train_accuracy": correct.item() / seen,
                "test_loss": test_loss.item() / len(xte),
                "test_accuracy": test_correct.item() / len(xte),
                "lr": lr,
                "images_per_second": seen / train_s,
                "epoch_seconds": epoch_s,
                "elapsed_seconds": elapsed,
            }
            out.write(json.dumps(m) + "\n")
            out.flush()
            print(
                f"epoch {m['epoch']}/{args.epochs}: train loss {m['train_loss']:.4f} acc "
                f"{100 * m['train_accuracy']:.2f}% | test acc {100 * m['test_accuracy']:.2f}% | "
                f"{m['images_per_second']:.0f} img/s, {epoch_s:.1f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
