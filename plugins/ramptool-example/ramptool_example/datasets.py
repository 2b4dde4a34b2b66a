"""A dataset: Fashion-MNIST at 14x14 (``fashion-mnist-14``), built on the registered ``fashion-mnist``."""

import torch.nn.functional as F

from ramptool.api import DatasetSpec, TensorSplit, get


def load_fashion_mnist_14(split: str, root, download: bool) -> TensorSplit:
    """Fashion-MNIST's split, each image 2x2-average-pooled to 14x14 (still uint8 in memory)."""
    full = get("dataset", "fashion-mnist").load(split, root, download)
    images = F.avg_pool2d(full.images.float(), 2).round().to(full.images.dtype)
    return TensorSplit(images, full.labels, full.num_classes)


FASHION_MNIST_14 = DatasetSpec(
    load=load_fashion_mnist_14,
    input_shape=(1, 14, 14),
    mean=(0.2860,),  # measured on the 14x14 training split
    std=(0.3301,),
    num_classes=10,
    description="Fashion-MNIST downsampled to 14x14 (4x fewer pixels): quick experiments on a CPU",
)
