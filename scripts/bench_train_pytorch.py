#!/usr/bin/env python3
"""Dev-only: the same training step as `train bench`, in PyTorch, for a side-by-side comparison.

Python because the peer it measures is PyTorch.

Same model (CIFAR ResNet-18: 3x3 stem, no max-pool, BasicBlocks at width x {1,2,4,8}, 1x1
projection shortcuts, global average pool, linear), same step (forward in training mode,
cross-entropy with label smoothing 0.1, backward, SGD with Nesterov momentum 0.9 and weight
decay 5e-4 on conv/linear weights only), same random batch, same timing (warm-up steps, then
the mean over timed steps).

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.11.0
    /tmp/torchvenv/bin/python scripts/bench_train_pytorch.py --width 64 --batch-size 128 --channels-last
    python3 scripts/bench_train_pytorch.py --device cuda --amp --channels-last --batch-size 256

On CUDA, `--amp` is `train bench --device cuda`'s default: float16 autocast with a GradScaler.

Prints one JSON object, with the same keys as `train bench --json` where they mean the same.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = ConvBn(cin, cout, 3, stride)
        self.conv2 = ConvBn(cout, cout, 3, 1)
        self.shortcut = ConvBn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        skip = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + skip)


class ResNet18(nn.Module):
    def __init__(self, width=64, num_classes=10):
        super().__init__()
        self.stem = ConvBn(3, width, 3, 1)
        layers, cin = [], width
        for i, mult in enumerate([1, 2, 4, 8]):
            cout = width * mult
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layers(x)
        return self.fc(x.mean(dim=(2, 3)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler (CUDA)")
    args = p.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    amp = args.amp and cuda
    if cuda:
        torch.backends.cudnn.benchmark = True

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ResNet18(args.width).to(dev)
    decay = [p for n, p in model.named_parameters() if n.endswith(".weight") and ".bn." not in n]
    no_decay = [p for n, p in model.named_parameters() if not (n.endswith(".weight") and ".bn." not in n)]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    x = torch.randn(args.batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch_size,), device=dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # As `train bench`: steps are queued without reading anything back; a step's time is when
    # the host could queue the next, and the total waits for the last one to finish.
    times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync()
            started = time.perf_counter()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        _ = loss.detach(), (logits.argmax(-1) == y).sum()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    sync()
    total = time.perf_counter() - started

    ips = args.batch_size * len(times) / total
    print(
        json.dumps(
            {
                "framework": f"pytorch {torch.__version__}",
                "width": args.width,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup": args.warmup,
                "threads": torch.get_num_threads(),
                "channels_last": args.channels_last,
                "device": args.device,
                "amp": amp,
                "images_per_second": ips,
                "step_ms_median": statistics.median(times) * 1e3,
                "step_ms_min": min(times) * 1e3,
                "step_ms_max": max(times) * 1e3,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
