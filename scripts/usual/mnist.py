"""docs/theory.md §5B written the way such an experiment usually is: the baseline whose whole-run
time scripts/bench.py puts beside `mtltrain dataset=mnist_mtl` (the same network, tasks cls3,
cls10 and recon, uncertainty weighting c·exp(−s)·L + s/2, Adam 1e-4, batch 256; torchvision's
dataset through a DataLoader with one worker process per core; test accuracy at the end).

    python scripts/usual/mnist.py --root DIR [--epochs 10] [--threads N]
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import datasets, transforms


def pad():  # Keras' "same" padding for a 2×2 kernel
    return nn.ZeroPad2d((0, 1, 0, 1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            pad(), nn.Conv2d(16, 16, 2), nn.ReLU(),
            pad(), nn.Conv2d(16, 8, 2), nn.ReLU(), nn.MaxPool2d(2),
            pad(), nn.Conv2d(8, 8, 2, stride=2), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.cls3 = nn.Sequential(nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
        self.cls10 = nn.Sequential(nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
        self.recon = nn.Sequential(
            nn.ConvTranspose2d(8, 8, 3, stride=3), nn.ReLU(),
            nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(4, 2, 3), nn.ReLU(),
            nn.ConvTranspose2d(2, 1, 2, stride=2), nn.Tanh(),
        )  # fmt: skip

    def forward(self, x):
        z = self.encoder(x)
        return self.cls3(z), self.cls10(z), self.recon(z)


def cls3_of(digits):
    return torch.where(digits == 2, 0, torch.where(digits == 6, 1, 2))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workers = len(os.sched_getaffinity(0))
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train = datasets.MNIST(args.root, train=True, transform=to_tensor)
    test = datasets.MNIST(args.root, train=False, transform=to_tensor)
    loader = torch.utils.data.DataLoader(
        train, batch_size=256, shuffle=True, num_workers=workers, persistent_workers=True
    )
    test_loader = torch.utils.data.DataLoader(test, batch_size=256, num_workers=workers)
    model = Net()
    log_vars = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([*model.parameters(), log_vars], lr=1e-4)
    factors = (1.0, 1.0, 0.5)

    for epoch in range(args.epochs):
        running = 0.0
        for images, digits in loader:
            out3, out10, recon = model(images)
            losses = (
                F.cross_entropy(out3, cls3_of(digits)),
                F.cross_entropy(out10, digits),
                F.mse_loss(recon, images),
            )
            loss = sum(
                c * torch.exp(-s) * task_loss + 0.5 * s
                for c, s, task_loss in zip(factors, log_vars, losses, strict=True)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
        print(f"epoch {epoch + 1}: loss {running / len(loader):.4f}")

    model.eval()
    correct = torch.zeros(2)
    with torch.no_grad():
        for images, digits in test_loader:
            out3, out10, _ = model(images)
            correct += torch.stack([(out3.argmax(1) == cls3_of(digits)).sum(),
                                    (out10.argmax(1) == digits).sum()])  # fmt: skip
    print("test accuracy cls3, cls10:", (correct / len(test)).tolist())
    print("sigma", torch.exp(0.5 * log_vars).tolist())


if __name__ == "__main__":  # DataLoader workers started by spawn import this file again
    main()
