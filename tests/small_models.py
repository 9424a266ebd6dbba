"""Tiny torch models shared by the API, native-runner and tuning tests."""

import torch


class Small(torch.nn.Module):
    """conv + ReLU + flatten + Linear: two quantizer groups (conv, fc), input (1, 3, 9, 9)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 7 * 7, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))
