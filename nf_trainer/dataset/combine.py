"""Several datasets in one experiment: train on the concatenation of the `train` members, evaluate on
every member's eval set(s) and on each `eval` member, each under its own name (val/<name>/...).

    python main.py dataset=multi \\
        +dataset@dataset.train.a=image_folder dataset.train.a.root=A \\
        +dataset@dataset.eval.b=csv dataset.eval.b.train_csv=B.csv

An `eval` member contributes its eval set, through the eval transforms; one that would split its
images into train and val (image_folder without train/ + val/, csv without val_csv, digits) is not
split: all its images are evaluated. All members must name the same classes in the same order (the index mapping), and give
images of the same channels and size.
"""
from __future__ import annotations

from torch.utils.data import ConcatDataset

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.dataset.splits import DataSplits


def combine(train: dict | None = None, eval: dict | None = None, train_transform=None, eval_transform=None) -> DataSplits:
    train, eval = dict(train or {}), dict(eval or {})
    if not train:
        raise NfTrainerError("dataset=multi needs at least one train member: "
                             "+dataset@dataset.train.NAME=OPTION (e.g. image_folder) and its keys")

    def build(key, node, **kwargs):
        if "name" in node and node["name"] is None:  # a member without a name of its own is named after its key
            kwargs["name"] = key
        return create_instance(node, train_transform=train_transform, eval_transform=eval_transform, **kwargs)

    built = {f"train.{key}": build(key, node) for key, node in train.items()}
    # val_fraction=None: an eval member that would split its images evaluates all of them
    built |= {f"eval.{key}": build(key, node, **({"val_fraction": None} if "val_fraction" in node else {}))
              for key, node in eval.items()}
    first, reference = next(iter(built.items()))
    for where, data in built.items():
        check_agree(first, reference, where, data)

    eval_sets = {}
    for where, data in built.items():
        key = where.split(".", 1)[1]
        for set_name, dataset in data.eval.items():
            name = key if len(data.eval) == 1 else f"{key}-{set_name}"
            if name == "avg":  # val/avg/<metric> is the mean over the eval sets
                raise NfTrainerError("'avg' names the average over eval sets: give the dataset member another name")
            if name in eval_sets:
                raise NfTrainerError(f"two eval sets are named '{name}': rename a member of dataset.train/dataset.eval")
            eval_sets[name] = dataset
    train_parts = [data.train for where, data in built.items() if where.startswith("train.")]
    return DataSplits(
        train=train_parts[0] if len(train_parts) == 1 else ConcatDataset(train_parts),
        eval=eval_sets, classes=reference.classes, in_channels=reference.in_channels, image_size=reference.image_size,
        bad_files=[bad for data in built.values() for bad in data.bad_files],
        annotation_fixes=[fix for data in built.values() for fix in data.annotation_fixes],
    )


def check_agree(first: str, a: DataSplits, where: str, b: DataSplits) -> None:
    """One-line error unless `b` has the same classes, index mapping, channels and image size as `a`; an image
    size of 0 (detection sets: every image keeps its own size) agrees with any."""
    if a.classes != b.classes:
        only_a, only_b = sorted(set(a.classes) - set(b.classes)), sorted(set(b.classes) - set(a.classes))
        if only_a or only_b:
            raise NfTrainerError(f"class names differ between dataset.{first} and dataset.{where}: only in {first}: "
                                 f"{', '.join(only_a) or '-'}; only in {where}: {', '.join(only_b) or '-'}")
        index = next(i for i, (x, y) in enumerate(zip(a.classes, b.classes)) if x != y)
        raise NfTrainerError(f"class index mapping differs between dataset.{first} and dataset.{where}: index {index} "
                             f"is '{a.classes[index]}' in one and '{b.classes[index]}' in the other; "
                             "give both the same class order (dataset.*.classes)")
    sizes_differ = a.image_size and b.image_size and a.image_size != b.image_size
    if a.in_channels != b.in_channels or sizes_differ:
        raise NfTrainerError(f"dataset.{first} gives {a.in_channels}x{a.image_size}px images but dataset.{where} gives "
                             f"{b.in_channels}x{b.image_size}px: use the same dataset.*.mode and transforms that resize")
