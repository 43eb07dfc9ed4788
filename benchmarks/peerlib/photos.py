"""Natural photographs from Debian wallpaper packages, as 224x224 ImageNet-style crops.

The photos are real photographs (nature, animals, objects, landscapes) picked by hand from
four Debian packages; the illustrations and abstract renders those packages also ship are
left out. `make bench-setup` installs the packages. Every fourth photo (in the order below)
is a calibration photo, the rest are evaluation photos, so the two sets never share a
photograph (not merely different crops of one). Each photo gives CROPS_PER_PHOTO crops:
six boxes (the centred square, a 75% centred square and four 70% corner squares), each
also mirrored.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import torch

# (Debian package, path). Plasma wallpapers ship several sizes; a glob picks one below.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/Dragonfly_by_Bolly.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/Picture_0B_by_freespace.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/Picture_1A_by_freespace.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/free_by_Peter_Nerlich.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg"),
    ("lomiri-wallpapers-20.04", "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/Aqua.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/Blinds.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/Dune.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/FreshFlower.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/Garden.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/LadyBird.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/RainDrops.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/Storm.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/TwoWings.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/Wood.jpg"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/YellowFlower.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/BytheWater/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/ColdRipple/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/ColorfulCups/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/DarkestHour/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/EveningGlow/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/FallenLeaf/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/Grey/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/OneStandsOut/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/Path/contents/images/*.jpg"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/summer_1am/contents/images/*.jpg"),
)
PACKAGES = tuple(sorted({package for package, _ in PHOTOS}))
CALIBRATION_EVERY = 4  # photos 0, 4, 8, ... calibrate; the others evaluate

# Crop boxes as (centre x, centre y, side), in fractions of the image (x, y) and of its
# short side (side); each box is also mirrored.
BOXES = ((0.5, 0.5, 1.0), (0.5, 0.5, 0.75), (0.0, 0.0, 0.7), (1.0, 0.0, 0.7), (0.0, 1.0, 0.7), (1.0, 1.0, 0.7))
CROPS_PER_PHOTO = 2 * len(BOXES)
SIZE = 224
WORK_SHORT_SIDE = 448  # photos are first shrunk to this short side: fast, and still > 224


@dataclass
class PhotoSet:
    """Crops of a set of photos: `pixels` (N, 3, 224, 224) floats in 0..1 (not normalised)."""

    paths: list[str]
    pixels: torch.Tensor
    photo_index: list[int]  # for each crop, the index into `paths` of its photo

    def normalised(self, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        """The crops normalised per channel as (x - mean) / std."""
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        return (self.pixels - m) / s


def resolve(pattern: str) -> str | None:
    """The photo file for a PHOTOS entry: for a glob, the size whose width is closest to 1920."""
    matches = sorted(glob.glob(pattern))
    if not matches:
        return None
    if len(matches) == 1:
        return matches[0]

    def width(path: str) -> int:
        stem = os.path.splitext(os.path.basename(path))[0]
        return int(stem.split("x")[0]) if stem.split("x")[0].isdigit() else 0

    return min(matches, key=lambda p: abs(width(p) - 1920))


def split() -> tuple[list[str], list[str], list[str]]:
    """(calibration paths, evaluation paths, missing PHOTOS entries)."""
    calibration, evaluation, missing = [], [], []
    for i, (_, pattern) in enumerate(PHOTOS):
        path = resolve(pattern)
        if path is None:
            missing.append(pattern)
        else:
            (calibration if i % CALIBRATION_EVERY == 0 else evaluation).append(path)
    return calibration, evaluation, missing


def crops(path: str) -> list[np.ndarray]:
    """The CROPS_PER_PHOTO crops of one photo, each (224, 224, 3) uint8."""
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (WORK_SHORT_SIDE * 2, WORK_SHORT_SIDE * 2))  # JPEG: decode at reduced scale
        image = image.convert("RGB")
        scale = WORK_SHORT_SIDE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    width, height = image.size
    short = min(width, height)
    result = []
    for cx, cy, side in BOXES:
        s = round(side * short)
        # The box's centre is clamped so the box stays inside the image (corner boxes).
        left = round(min(max(cx * width - s / 2, 0), width - s))
        top = round(min(max(cy * height - s / 2, 0), height - s))
        crop = image.crop((left, top, left + s, top + s)).resize((SIZE, SIZE), Image.BICUBIC)
        array = np.asarray(crop, dtype=np.uint8)
        result += [array, array[:, ::-1]]
    return result


def load(paths: list[str]) -> PhotoSet:
    """All crops of `paths`, as a PhotoSet."""
    arrays, index = [], []
    for i, path in enumerate(paths):
        for array in crops(path):
            arrays.append(np.ascontiguousarray(array))
            index.append(i)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return PhotoSet(list(paths), pixels.contiguous(), index)
