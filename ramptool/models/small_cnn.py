"""A small CNN (conv16-conv32-conv64 + fc256, no BatchNorm) that trains fast on a CPU at 28x28 or 32x32."""

import torch.nn as nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10, in_chans=1, image_size=28, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        reduced = (image_size + 3) // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * width * reduced * reduced, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))
