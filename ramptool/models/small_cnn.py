"""A small CNN (conv16-conv32-conv64 + fc256) that trains fast on a CPU at 28x28 or 32x32; without BatchNorm
by default, with BatchNorm after every convolution as ``small-cnn-bn``."""

import torch.nn as nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10, in_chans=1, image_size=28, width=16, batchnorm=False):
        super().__init__()
        layers = []
        for index, (inputs, outputs) in enumerate([(in_chans, width), (width, 2 * width), (2 * width, 4 * width)]):
            layers.append(nn.Conv2d(inputs, outputs, 3, stride=1 if index == 0 else 2, padding=1))
            layers.extend([nn.BatchNorm2d(outputs), nn.ReLU()] if batchnorm else [nn.ReLU()])
        self.features = nn.Sequential(*layers)
        reduced = (image_size + 3) // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * width * reduced * reduced, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))
