"""The base of the loaders that wrap a DataLoader (counting bad files, decoding or normalizing on the device):
len, sampler, dataset, batch_size and the rest are the wrapped loader's, so the loop and the jobs treat every
loader alike."""
from __future__ import annotations


class LoaderView:
    """Subclasses define `__iter__` over `self.loader`."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name == "loader" or name.startswith("__"):  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)
