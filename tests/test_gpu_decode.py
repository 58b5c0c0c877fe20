"""`loader.decode`: what runs without a GPU. The bytes-reading dataset and its collate, the per-file CPU decode of
the same byte batches (what nvJPEG falls back to), bad files skipped and counted once, and `loader.decode=gpu`
without CUDA refused in one line before anything is built."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from nf_trainer.dataset.files import CountBadFiles, collate_valid
from nf_trainer.dataset.gpu_decode import DecodedOnDevice, EncodedFiles, collate_encoded, decode_batch
from nf_trainer.dataset.image_folder import image_folder
from nf_trainer.dataset.images import load_image
from nf_trainer.transforms import build_pipeline
from tests.conftest import compose_cfg, fails_in_one_line, runs
from tests.data_files import make_image_folder, write_image
from tests.test_data_units import damage_middle

CPU = torch.device("cpu")


def folder_with_a_damaged_file(tmp_path):
    root = make_image_folder(tmp_path / "digits", per_class=6, bad=False)
    write_image(root / "4" / "damaged.png", np.random.RandomState(0).randint(0, 256, (64, 64), dtype=np.uint8), "L", "PNG")
    damage_middle(root / "4" / "damaged.png")  # passes the quick check; only decoding tells
    return root


def test_byte_batches_decode_to_what_load_image_reads_and_bad_files_give_a_reason(tmp_path):
    root = folder_with_a_damaged_file(tmp_path)
    files = image_folder(str(root), mode="RGB", check="full").train  # the damaged file left out, and added last
    files.samples.append((str(root / "4" / "damaged.png"), 4))
    encoded, labels, indices = collate_encoded([EncodedFiles(files)[i] for i in range(len(files))])
    assert all(isinstance(e, torch.Tensor) and e.dtype == torch.uint8 for e in encoded) and labels.shape == (len(files),)
    decoded = decode_batch(encoded, "RGB", CPU)
    for (path, _), image in zip(files.samples[:-1], decoded[:-1]):
        assert torch.equal(image, load_image(path, "RGB")), path
    assert isinstance(decoded[-1], str)  # the damaged PNG: a reason, not an image


def test_decoded_batches_match_the_cpu_loader_and_each_bad_file_is_counted_once_on_both(tmp_path):
    root = folder_with_a_damaged_file(tmp_path)
    eval_tf = build_pipeline(compose_cfg("transforms=digits").transforms.eval)
    files = image_folder(str(root), mode="L", check="full", train_transform=eval_tf).train
    files.samples.insert(3, (str(root / "4" / "damaged.png"), 4))  # as if the quick check had let it through
    plain_bad = []  # the CPU loader's, decoding in a worker process
    plain = CountBadFiles(DataLoader(files, batch_size=8, collate_fn=collate_valid, num_workers=1), plain_bad)
    bytes_loader = DataLoader(EncodedFiles(files), batch_size=8, collate_fn=collate_encoded)
    bad_files = []
    on_device = DecodedOnDevice(bytes_loader, files, CPU, files.transform, None, bad_files)
    for _ in range(2):  # two epochs meet the bad file: it counts once
        for (x, y), (xp, yp) in zip(on_device, plain, strict=True):
            assert torch.equal(x, xp) and torch.equal(y, yp)
    assert [path for path, _ in bad_files] == [path for path, _ in plain_bad] == [str(root / "4" / "damaged.png")]


def test_decode_gpu_without_cuda_fails_in_one_line_before_the_run(tmp_path, out):
    root = make_image_folder(tmp_path / "digits", per_class=6, bad=False)
    message = fails_in_one_line("dataset=image_folder", f"dataset.root={root}", "transforms=digits", "loader.decode=gpu",
                                "trainer.device=cpu", "debug=fast", out=out)
    assert message == ("loader.decode=gpu needs a CUDA GPU (training runs on cpu): use loader.decode=auto or "
                       "loader.decode=cpu")
    assert runs(out) == []
    assert fails_in_one_line("loader.decode=nvjpeg", out=out) == "loader.decode must be one of auto, cpu, gpu, not 'nvjpeg'"
