"""What the tasks' pictures share: model inputs made viewable, tiles with captions, and a grid of tiles."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MIN_TILE = 128  # small inputs (8x8 digits, 32 px CIFAR) are enlarged to be seen
MAX_TILE = 320  # large ones are shrunk: a picture of 16 images stays a few hundred KB
GREEN, RED, WHITE, DARK = (40, 160, 60), (210, 40, 40), (255, 255, 255), (40, 40, 40)


def viewable(images: torch.Tensor) -> torch.Tensor:
    """Model inputs (N, C, H, W), normalized or not, as uint8 RGB on the CPU: each image stretched to 0..255
    (the normalization's mean and std are the transforms', not known here), one channel made three."""
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    images = images.float()
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    images = ((images - low) / (high - low).clamp(min=1e-6) * 255).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def tile_scale(height: int, width: int) -> float:
    side = max(height, width)
    return MIN_TILE / side if side < MIN_TILE else (MAX_TILE / side if side > MAX_TILE else 1.0)


def resized(image: torch.Tensor, scale: float) -> Image.Image:
    """A uint8 (3, H, W) tensor as a PIL image `scale` times its size (nearest when enlarging: pixels stay sharp)."""
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    if scale == 1.0:
        return picture
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)


@functools.cache
def font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


LINE = 16  # a caption line's height


def captioned(picture: Image.Image, lines: list[tuple[str, tuple[int, int, int]]], width: int | None = None,
              room: int = 0) -> Image.Image:
    """`picture` above its caption: one (text, colour) per line, cut to the tile's width; `room`: empty lines
    after them, written later (`write`)."""
    width = width or picture.width
    tile = Image.new("RGB", (width, picture.height + LINE * (len(lines) + room) + 4), WHITE)
    tile.paste(picture, ((width - picture.width) // 2, 0))
    draw = ImageDraw.Draw(tile)
    for row, line in enumerate(lines):
        write(draw, (2, picture.height + 2 + row * LINE), *line, width - 4)
    return tile


def write(draw: ImageDraw.ImageDraw, at: tuple[int, int], text: str, colour: tuple[int, int, int], width: int) -> None:
    """`text` at `at`, cut to `width` pixels."""
    while text and draw.textlength(text, font=font()) > width:
        text = text[:-2] + "…"
    draw.text(at, text, fill=colour, font=font())


PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]  # one per class


def box_picture(picture: Image.Image, boxes: torch.Tensor, classes: torch.Tensor, labels: list[str]) -> Image.Image:
    """`picture` with `boxes` (XYXY in its pixels) drawn in their class's colour, each with its label."""
    from matplotlib import get_data_path  # lazy: only its font file, for labels of a readable size
    from torchvision.utils import draw_bounding_boxes

    image = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
    if len(boxes):
        colours = [PALETTE[int(c) % len(PALETTE)] for c in classes.tolist()]
        image = draw_bounding_boxes(image, boxes.detach().float().cpu(), labels, colours, width=2,
                                    font=str(Path(get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), font_size=11,
                                    fill_labels=True)
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def grid(tiles: list[Image.Image], columns: int = 8) -> np.ndarray:
    """Tiles in rows of `columns` on white: one uint8 picture (H, W, 3)."""
    return np.asarray(sheet(tiles, columns)[0])


def sheet(tiles: list[Image.Image], columns: int = 8, gap: int = 4) -> tuple[Image.Image, list[tuple[int, int]]]:
    """Tiles in rows of `columns` on white, and where each tile's top left corner landed."""
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    page = Image.new("RGB", (columns * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), WHITE)
    corners = []
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        corners.append((gap + column * (cell_w + gap), gap + row * (cell_h + gap)))
        page.paste(tile, corners[-1])
    return page, corners
