"""Regenerate ``uar_reference.safetensors``: advex-uar's own fog, snow, Gabor, elastic and JPEG maths evaluated on
fixed seeded inputs, which tests/test_unseen.py compares ramptool's implementations against.

advex-uar is not a dependency (it hard-codes CUDA); read it without installing it:

    pip download --no-deps advex-uar==0.0.6.dev0 -d /tmp/uar && unzip -q /tmp/uar/*.whl -d /tmp/uar
    .venv/bin/python tests/reference/make_uar_reference.py /tmp/uar/advex_uar

Its modules are loaded with ``.cuda()`` and ``device="cuda"`` rewritten to the CPU, nothing else changed, except
that the elastic warp is sampled with ``align_corners=True`` (the grid advex-uar builds assumes it; PyTorch's
default changed to False after advex-uar was written, see ramptool/attacks/unseen/elastic.py).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SIDE = 32
BATCH = 2


def load_reference(package: Path, name: str) -> types.ModuleType:
    source = (package / "attacks" / f"{name}.py").read_text()
    source = source.replace(".cuda()", "").replace('device="cuda"', 'device="cpu"').replace("device='cuda'",
                                                                                            "device='cpu'")
    module = types.ModuleType(f"advex_uar_{name}")
    exec(compile(source, f"advex_uar/attacks/{name}.py", "exec"), module.__dict__)
    return module


def smooth_images(generator: torch.Generator, channels: int) -> torch.Tensor:
    """[0,1] images with edges and flat regions, so every transform has something to move."""
    noise = torch.rand(BATCH, channels, SIDE // 4, SIDE // 4, generator=generator)
    return F.interpolate(noise, size=(SIDE, SIDE), mode="nearest") * 0.7 + 0.3 * torch.rand(
        BATCH, channels, SIDE, SIDE, generator=generator)


def fog_reference(fog, generator, tensors):
    size = 2 * SIDE  # advex-uar draws CIFAR-10's fog on 64x64 and crops 16 pixels off each side
    levels = int(np.log2(size))
    theta = torch.rand(BATCH, 3 * sum(4**i for i in range(levels)), generator=generator)
    fields = []
    for image in range(BATCH):  # one image per call: advex-uar normalises over the whole batch
        variables, start = [], 0
        for level in range(levels):
            for _ in range(3):
                count = 4**level
                variables.append(theta[image:image + 1, start:start + count].view(1, 2**level, 2**level))
                start += count
        fields.append(fog.fog_creator(variables, 1, mapsize=size, wibbledecay=2.0)[0, 0])
    tensors["fog_theta"], tensors["fog_field"] = theta, torch.stack(fields)


def snow_reference(snow, generator, tensors):
    np.random.seed(0)
    kernels = snow.make_kernels()
    np.random.seed(0)  # the same draws again, recorded for ramptool's streak_kernel
    flip = np.random.uniform() < 0.5
    draws = []
    for _ in range(7):
        draws.append([np.random.randint(8, 13), np.random.randint(8, 13),
                      np.random.choice([1, 3, 5], p=[0.6, 0.3, 0.1]), np.random.uniform(0.41, 0.6)])
    theta = torch.rand(BATCH, 7, SIDE // 4, SIDE // 4, generator=generator)
    tensors["snow_kernel_draws"] = torch.tensor(draws, dtype=torch.float64)
    tensors["snow_flip"] = torch.tensor([float(flip)])
    tensors["snow_kernels"] = torch.cat(kernels, 1)
    tensors["snow_theta"] = theta
    tensors["snow_layer"] = snow.snow_creator(theta, kernels, SIDE)


def gabor_reference(gabor, generator, tensors):
    params = torch.rand(BATCH, 4, generator=generator)
    sides = (1 + (params[:, 0] * 10).long()).clamp(max=10)
    sigma, frequency, angle = 0.3 * params[:, 1] + 0.1, 2.75 * params[:, 2] + 3, np.pi * params[:, 3]
    kernels = torch.cat([gabor.get_gabor_with_sides(23, sigma[i:i + 1], frequency[i:i + 1], angle[i:i + 1],
                                                    int(sides[i])) for i in range(BATCH)]).view(BATCH, 1, 23, 23)
    theta = (torch.rand(BATCH, 1, SIDE, SIDE, generator=generator) * 2 - 1) * (
        torch.rand(BATCH, 1, SIDE, SIDE, generator=generator) < 0.3)
    tensors["gabor_sides"], tensors["gabor_sigma"] = sides, sigma
    tensors["gabor_frequency"], tensors["gabor_angle"] = frequency, angle
    tensors["gabor_kernels"], tensors["gabor_theta"] = kernels, theta
    # in float64: advex-uar's equalisation takes an FFT round trip whose float32 rounding, amplified by gains of up
    # to 1000, moves values by up to 0.004; in float64 the round trip is exact to 1e-12
    tensors["gabor_noise"] = gabor.gabor_rand_distributed(theta.double(), kernels.double())


def elastic_reference(elastic, generator, tensors):
    images = smooth_images(generator, 3)
    theta = (torch.rand(BATCH, 2, SIDE, SIDE, generator=generator) * 2 - 1) * 0.8  # pixels
    deformer = elastic.ElasticDeformation(SIDE, 5, 3.0 / 224.0 * SIDE)
    original = F.grid_sample
    elastic.F.grid_sample = lambda im, grid, mode: original(im, grid, mode=mode, align_corners=True)
    try:
        warped = deformer(images, theta * 2.0 / (SIDE - 1))
    finally:
        elastic.F.grid_sample = original
    tensors["elastic_images"], tensors["elastic_theta"], tensors["elastic_warped"] = images, theta, warped.detach()


def jpeg_reference(jpeg, generator, tensors):
    images = smooth_images(generator, 3)
    eps = 0.5
    blocks, chroma_blocks = (SIDE // 8) ** 2, (SIDE // 16) ** 2
    theta = (torch.rand(BATCH, (blocks + 2 * chroma_blocks) * 64, generator=generator) * 2 - 1) * eps
    # advex-uar lays out its blocks and coefficients on the transposed image: map ramptool's layout onto it
    ramptool_planes = [theta[:, :blocks * 64].view(BATCH, SIDE // 8, SIDE // 8, 8, 8),
                       theta[:, blocks * 64:(blocks + chroma_blocks) * 64].view(BATCH, SIDE // 16, SIDE // 16, 8, 8),
                       theta[:, (blocks + chroma_blocks) * 64:].view(BATCH, SIDE // 16, SIDE // 16, 8, 8)]
    rounding = [plane.permute(0, 2, 1, 4, 3).reshape(BATCH, -1, 8, 8) / eps for plane in ramptool_planes]
    coder = jpeg.JPEG()
    tensors["jpeg_images"], tensors["jpeg_theta"] = images, theta
    tensors["jpeg_decoded"] = coder(images * 255.0, rounding, torch.full((BATCH,), eps)) / 255.0


def main(package: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    fog_reference(load_reference(package, "fog"), generator, tensors)
    snow_reference(load_reference(package, "snow"), generator, tensors)
    gabor_reference(load_reference(package, "gabor"), generator, tensors)
    elastic_reference(load_reference(package, "elastic"), generator, tensors)
    jpeg_reference(load_reference(package, "jpeg"), generator, tensors)
    out = HERE / "uar_reference.safetensors"
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, str(out),
              metadata={"source": "advex-uar 0.0.6.dev0 (PyPI), tests/reference/make_uar_reference.py"})
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
