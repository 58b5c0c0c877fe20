"""Batches made float and normalized on the GPU (`loader.normalize_on_device`, on by default on CUDA).

The workers collate uint8 images; `OnDevice` copies each batch to the device (non-blocking, from pinned
memory) and runs the ToDtype/Normalize steps there on the whole batch: a quarter of the bytes cross the
bus and the CPU does no per-pixel float work. Targets stay on the host, as every loader's do.
"""
from __future__ import annotations


class OnDevice:
    """A DataLoader whose image batches arrive on `device`, transformed by `transform`. Everything else
    (len, sampler, dataset, batch_size) is the wrapped loader's."""

    def __init__(self, loader, device, transform):
        self.loader, self.device, self.transform = loader, device, transform

    def __iter__(self):
        for images, targets in self.loader:
            yield self.transform(images.to(self.device, non_blocking=True)), targets

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name in ("loader", "device", "transform"):  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)
