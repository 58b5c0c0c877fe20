"""WebDataset shards end to end: written by `prepare shards` from a real image folder, trained on through the real
Hydra and job in this process, streamed from disk and over a loopback HTTP server, split across ranks and
DataLoader workers, resumed mid-epoch, and refused in one line when a shard is missing or cut short."""
from __future__ import annotations

import functools
import json
import shutil
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from nf_trainer.cli.prepare import main as prepare_main
from nf_trainer.cli.prepare import write_shards
from nf_trainer.dataset.image_folder import image_folder
from nf_trainer.dataset.shards import INDEX, ShardLoader, shard_loader, shard_order, shards
from tests.conftest import fails_in_one_line, metric_history, only_run, run_here, runs
from tests.data_files import make_image_folder

SHARD_SIZE = 40  # 159 train and 41 val images (202 files, split 0.2, then 2 bad left out): 4 train shards, 1 val shard
FAST = ("loader.batch_size=16", "trainer.early_stopping.enabled=false", "trainer.progress_bar=false")


def urls(where: str, count: int) -> str:
    """dataset.urls for `count` train shards under `where`, quoted for Hydra's grammar (an unquoted {...} is a dict)."""
    return f"dataset.urls='{where}/train-{{000000..{count - 1:06d}}}.tar'"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """200 digit images in 10 class folders (mixed formats and modes), plus a corrupt JPEG and a zero-byte PNG."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "digits_png", per_class=20)


@pytest.fixture(scope="module")
def written(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "digits"
    write_shards(folder, out, shard_size=SHARD_SIZE)
    return out


def test_prepare_writes_shards_with_classes_counts_and_bad_files_in_the_index(folder, tmp_path, capsys):
    assert prepare_main(["shards", str(folder), str(tmp_path / "s"), "--shard-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 train shards (159 images) and 1 val shard (41 images), 10 classes" in printed
    assert f"python main.py dataset=shards \"dataset.urls='{tmp_path}/s/train-{{000000..000002}}.tar'\"\n" in printed
    index = json.loads((tmp_path / "s" / INDEX).read_text())
    assert index["classes"] == [str(d) for d in range(10)] and index["name"] == "digits_png"
    train = index["splits"]["train"]
    assert [s["samples"] for s in train["shards"]] == [64, 64, 31] and sum(train["class_counts"].values()) == 159
    assert all(s["bytes"] == (tmp_path / "s" / s["name"]).stat().st_size for s in train["shards"])
    assert sorted(Path(p).name for p, _ in index["bad_files"]) == ["corrupt.jpg", "empty.png"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [INDEX, "train-000000.tar", "train-000001.tar",
                                                                  "train-000002.tar", "val-000000.tar"]
    # nothing is overwritten
    assert prepare_main(["shards", str(folder), str(tmp_path / "s")]) == 1
    assert "holds shards already" in capsys.readouterr().err


def test_the_val_shards_hold_exactly_the_image_folder_val_set(folder, written):
    """Why the accuracies below agree: the same val images with the same labels, decoded the same way."""
    from_shards = shards(urls=f"{written}/train-{{000000..000003}}.tar").eval["digits_png"]
    from_folder = image_folder(root=str(folder)).eval["digits_png"]
    key = lambda sample: (sample[1], sample[0].numpy().tobytes())
    assert sorted(map(key, from_shards)) == sorted(key(from_folder[i]) for i in range(len(from_folder)))


def test_shards_train_and_the_checkpoint_scores_the_same_on_image_folder(folder, written, out):
    """Trained on shards; its last checkpoint evaluated with dataset=image_folder on the same images gives the val
    accuracy (and loss) the shard run logged for it. The two sources shuffle differently (shard order and a buffer
    vs. a sampler), so two trainings would not reach the same weights and their accuracies could differ by more than
    one image of 41 (0.024): the comparison is of one checkpoint on both, and exact (the test above shows why)."""
    run_here("dataset=shards", urls(written, 4), "trainer.max_epochs=3", *FAST, out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.metrics["data/bad_files"] == 2  # left out by prepare
    assert f"-urls{written}/train-{{000000..000003}}.tar-" in run.info.run_name  # without the quotes Hydra needs
    assert run.data.params["data.train_size"] == "159" and run.data.params["data.digits_png.size"] == "41"
    assert len(metric_history(out, run.info.run_id, "train/step_loss")) == 3 * 10 // 10  # 10 steps an epoch, every 10th
    trained = {key: metric_history(out, run.info.run_id, f"val/digits_png/{key}")[-1].value for key in ("accuracy", "loss")}

    run_here("mode=eval", f"ckpt={run.data.tags['output_dir']}/last.pt", "dataset=image_folder", f"dataset.root={folder}",
             out=out)
    evaluated = next(r for r in runs(out) if r.data.tags.get("mode") == "eval").data.metrics
    assert abs(evaluated["val/digits_png/accuracy"] - trained["accuracy"]) <= 0.01
    assert evaluated["val/digits_png/accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)
    assert evaluated["val/digits_png/loss"] == pytest.approx(trained["loss"], rel=1e-5)


def test_every_rank_and_worker_reads_its_own_part_and_together_every_sample(written):
    data = shards(urls=f"{written}/train-{{000000..000003}}.tar")
    stream, seed = data.train, 7 * 1_000_003
    for world, workers, drop_last in ((2, 2, False), (3, 2, False), (3, 2, True)):
        stream.split(world, 0, workers, drop_last)
        slots = world * workers
        keys = [key for slot in range(slots) for _, key, _, _ in stream.raw_samples(slot, seed)]
        assert len(keys) == slots * stream.per_slot
        counts = Counter(keys)
        if drop_last:  # cut: none twice, at most slots - 1 left out
            assert max(counts.values()) == 1 and 159 - len(counts) < slots
        else:  # padded: all of them, the padding (< one per slot) twice
            assert len(counts) == 159 and sum(counts.values()) - 159 < slots

    # through the real DataLoader: 2 ranks of 2 workers, each batch from one worker; len() is exact
    seen, batches = Counter(), {}
    for rank in range(2):
        loader = shard_loader(data.train, 16, 2, rank, num_workers=2, generator=torch.Generator().manual_seed(seed),
                              collate_fn=lambda samples: torch.stack([image for image, _ in samples]))
        assert isinstance(loader, ShardLoader)
        batches[rank] = list(loader)
        assert len(batches[rank]) == len(loader) == 2 * 3  # 40 samples a worker (159 padded to 160): 16 + 16 + 8
        seen.update(image.numpy().tobytes() for batch in batches[rank] for image in batch)
    data.train.split(1, 0, 1, False)
    every = Counter(image.numpy().tobytes() for image, _ in data.train)
    assert not every - seen and sum((seen - every).values()) == 1  # all 159, one twice: padding to 4 slots x 40


def test_the_order_is_a_function_of_seed_and_epoch(written):
    stream = shards(urls=f"{written}/train-{{000000..000003}}.tar").train

    def labels(seed: int) -> list[int]:
        stream.epoch_seed.fill_(seed)  # what ShardLoader does at each epoch's start
        return [label for _, label in stream]

    first = labels(7 * 1_000_003)
    assert labels(7 * 1_000_003) == first and labels(7 * 1_000_003 + 1) != first
    assert sorted(first) == sorted(label for _, _, _, label in stream.raw_samples(0, 0))


SETUP = ("trainer.max_epochs=2", "trainer.deterministic=true", "seed=7", "loader.batch_size=16",
         "trainer.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=2", "dataset.shuffle_buffer=16", *FAST[1:])


def assert_same_training(out: Path, reference: Path) -> None:
    mine, ref = (torch.load(Path(only_run(o).data.tags["output_dir"]) / "last.pt", weights_only=True)["model"]
                 for o in (out, reference))
    assert all(torch.equal(mine[k], ref[k]) for k in ref), "weights differ"
    for key in ("train/loss", "train/accuracy", "val/digits_png/loss"):
        history = lambda o, key=key: {m.step: m.value for m in metric_history(o, only_run(o).info.run_id, key)}
        assert history(out) == history(reference), key


def test_a_cut_short_shard_stops_mid_epoch_in_one_line_and_the_resume_is_exact(written, tmp_path, out):
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    run_here("dataset=shards", urls(written, 4), *SETUP, out=reference)

    copy = shutil.copytree(written, tmp_path / "copy")
    last = copy / f"train-{shard_order(4, 7 * 1_000_003, True)[-1]:06d}.tar"  # the first epoch reads it last
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    line = fails_in_one_line("dataset=shards", urls(copy, 4), *SETUP, "dataset.check=none", out=out)
    assert line.startswith(f"shard {last} is truncated") and "\n" not in line
    (failed,) = runs(out)
    assert failed.info.status == "FAILED"
    saved = torch.load(Path(failed.data.tags["output_dir"]) / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and saved["step_in_epoch"] > 0  # nothing lost: the steps before it are saved

    last.write_bytes(whole)  # the shard copied again
    run_here("dataset=shards", urls(copy, 4), *SETUP, "dataset.check=none", f"resume={failed.data.tags['output_dir']}",
             out=out)
    assert only_run(out).info.status == "FINISHED"
    assert_same_training(out, reference)


def test_a_missing_or_cut_short_shard_is_refused_before_training(written, tmp_path, out):
    copy = shutil.copytree(written, tmp_path / "copy")
    (copy / "train-000002.tar").write_bytes((copy / "train-000002.tar").read_bytes()[:5000])
    line = fails_in_one_line("dataset=shards", urls(copy, 4), *FAST, out=out)
    assert line == (f"shard {copy}/train-000002.tar is truncated: 5000 of the {(written / 'train-000002.tar').stat().st_size}"
                    " bytes its index records; copy it again or rerun prepare shards")
    (copy / "train-000002.tar").unlink()
    line = fails_in_one_line("dataset=shards", urls(copy, 4), *FAST, out=out)
    assert line == f"shard {copy}/train-000002.tar does not exist: check dataset.urls"
    assert runs(out) == []  # refused before any run began


def test_a_worker_that_meets_a_cut_short_shard_fails_in_one_line(written, tmp_path, out):
    copy = shutil.copytree(written, tmp_path / "copy")
    (copy / "train-000001.tar").write_bytes((copy / "train-000001.tar").read_bytes()[:20000])
    line = fails_in_one_line("dataset=shards", urls(copy, 4), *FAST, "trainer.max_epochs=1", "dataset.check=none",
                             "loader.num_workers=1", out=out)
    assert line.startswith(f"shard {copy}/train-000001.tar is truncated") and "\n" not in line


class CountingHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        CountingHandler.requests.append(self.path)


@pytest.fixture
def server(written, tmp_path):
    """The shards (one of them removed) over HTTP on loopback; yields its base URL."""
    served = shutil.copytree(written, tmp_path / "served")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_shards_stream_over_http(server, out):
    base, served = server
    CountingHandler.requests.clear()
    run_here("dataset=shards", urls(base, 4), "trainer.max_epochs=1", *FAST, out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.params["data.train_size"] == "159"
    assert "/index.json" in CountingHandler.requests
    assert Counter(CountingHandler.requests)["/train-000000.tar"] >= 2  # its size checked, then streamed

    (served / "train-000003.tar").unlink()
    line = fails_in_one_line("dataset=shards", urls(base, 4), *FAST, out=out)
    assert line == f"shard {base}/train-000003.tar does not exist: check dataset.urls"
