"""docs/theory.md §5A written the way such an experiment usually is: the baseline whose whole-run
time scripts/bench.py puts beside `mtltrain experiment=two_slope_source` (the same model, loss
exp(−s)·MSE + s, optimizer, batch size and epochs; its own draw of the data).

    python scripts/usual/two_slope.py [--epochs 1500]
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1500)
args = parser.parse_args()

torch.manual_seed(0)
x = torch.randn(300, 1)
y1 = -2 * x + 1 + 3.0 * torch.randn(300, 1)
y2 = 1.5 * x + 3 + 0.5 * torch.randn(300, 1)
loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(x, y1, y2), batch_size=16, shuffle=True
)
nets = nn.ModuleList(
    [nn.Sequential(nn.Linear(1, 512), nn.ReLU(), nn.Linear(512, 1)) for _ in range(2)]
)
log_vars = nn.Parameter(torch.zeros(2))
optimizer = torch.optim.Adam([*nets.parameters(), log_vars], lr=3e-4)

for _ in range(args.epochs):
    for xb, t1, t2 in loader:
        losses = [nn.functional.mse_loss(net(xb), t) for net, t in zip(nets, (t1, t2), strict=True)]
        loss = sum(torch.exp(-s) * mse + s for s, mse in zip(log_vars, losses, strict=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

print("sigma", torch.exp(0.5 * log_vars).tolist())
