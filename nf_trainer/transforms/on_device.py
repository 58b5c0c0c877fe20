"""Batches made float and normalized on the GPU (`loader.normalize_on_device`, on by default on CUDA).

The workers collate uint8 images; `OnDevice` copies each batch to the device (non-blocking, from pinned
memory) and runs the ToDtype/Normalize steps there on the whole batch: a quarter of the bytes cross the
bus and the CPU does no per-pixel float work. Targets stay on the host, as every loader's do.
"""
from __future__ import annotations

from nf_trainer.core.loader_view import LoaderView


class OnDevice(LoaderView):
    """A DataLoader whose image batches arrive on `device`, transformed by `transform`."""

    def __init__(self, loader, device, transform):
        super().__init__(loader)
        self.device, self.transform = device, transform

    def __iter__(self):
        for images, targets in self.loader:
            yield self.transform(images.to(self.device, non_blocking=True)), targets
