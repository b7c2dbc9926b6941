"""Alternating labeled / pseudo-labeled batches for semi-supervised distillation (SAD)."""

from __future__ import annotations

import json

import pytest
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from msadkit.config import load_config
from msadkit.data.build import build_dataset, resolve_data_paths
from msadkit.engine.semi_supervised.sad_loader import AlternatingSampler, build_train_loader
from msadkit.errors import ConfigError, DatasetError


def batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def test_even_batches_are_labeled_odd_batches_mix_both():
    sampler = AlternatingSampler(10, 7, 3, seed=4)
    stream = list(sampler)
    assert len(stream) == len(sampler) == 18  # 2 kinds x floor(10 / 3) batches x 3
    chunks = batches(stream, 3)
    labeled, mixed = chunks[0::2], chunks[1::2]
    assert all(i < 10 for batch in labeled for i in batch)
    flat = [i for batch in labeled for i in batch]
    assert len(set(flat)) == len(flat) == 9  # no labeled image twice in one epoch
    assert all(0 <= i < 17 for batch in mixed for i in batch)
    # Over a few epochs the mixed batches reach the pseudo-labeled images.
    seen_pseudo = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        seen_pseudo |= {i for batch in batches(list(sampler), 3)[1::2] for i in batch if i >= 10}
    assert seen_pseudo == set(range(10, 17))


def test_order_depends_only_on_seed_and_epoch():
    first, second = AlternatingSampler(12, 5, 2, seed=1), AlternatingSampler(12, 5, 2, seed=1)
    assert list(first) != list(first)  # each pass advances the epoch
    second.set_epoch(1)
    again = AlternatingSampler(12, 5, 2, seed=1)
    again.set_epoch(1)
    assert list(second) == list(again)
    other_seed = AlternatingSampler(12, 5, 2, seed=2)
    other_seed.set_epoch(1)
    assert list(other_seed) != list(again)


def test_fewer_labeled_images_than_a_batch_still_gives_full_batches():
    stream = list(AlternatingSampler(2, 5, 3))
    labeled, mixed = stream[:3], stream[3:]
    assert len(stream) == 6
    assert set(labeled) <= {0, 1} and len(set(labeled)) == 2
    assert all(i < 7 for i in mixed)


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_process_keeps_the_alternation_under_distributed_sharding(world_size):
    sampler = AlternatingSampler(20, 9, 2, seed=0, world_size=world_size)
    per_rank = []
    for rank in range(world_size):
        # What Lightning wraps a custom sampler in under DDP (order kept, positions rank::world).
        shard = DistributedSamplerWrapper(sampler, num_replicas=world_size, rank=rank, shuffle=False)
        shard.set_epoch(0)
        per_rank.append(batches(list(shard), 2))
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) % 2 == 0
    for rank_batches in per_rank:
        assert all(i < 20 for batch in rank_batches[0::2] for i in batch)
    # Within one global labeled batch the processes see different images.
    for step in range(0, len(per_rank[0]), 2):
        together = [i for rank_batches in per_rank for i in rank_batches[step]]
        assert len(set(together)) == len(together)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="num_labeled >= 1"):
        AlternatingSampler(0, 3, 2)


# Loader ------------------------------------------------------------------------------------------


def stream_source(loader):
    """The object whose method gives the loader's per-epoch index stream (an AlternatingSampler for SAD)."""
    return getattr(loader.sampler.order, "__self__", None)


def tiny_config(tmp_path, tiny_overrides, *extra: str) -> dict:
    return load_config(
        "adl/retinanet_student_demo",
        tiny_overrides(tmp_path / "run", arch="retinanet") + ["data.synthetic.num_unlabeled=6", *extra],
    )


def write_pseudo_labels(config: dict, path, *, first_id: int = 1001, category_offset: int = 0) -> None:
    """One box per unlabeled image, with image ids from ``first_id`` so that batches reveal their origin."""
    paths = resolve_data_paths(config)
    unlabeled = json.loads(paths["unlabeled_json"].read_text())
    images = [dict(image, id=first_id + k) for k, image in enumerate(unlabeled["images"])]
    annotations = [
        {"id": k + 1, "image_id": image["id"], "category_id": 1 + category_offset, "bbox": [4, 6, 20, 10],
         "area": 200.0, "iscrowd": 0, "score": 0.9}
        for k, image in enumerate(images)
    ]
    categories = [dict(c, id=c["id"] + category_offset) for c in unlabeled["categories"]]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def test_without_pseudo_labels_the_plain_shuffled_loader_is_used(tmp_path, tiny_overrides):
    config = tiny_config(tmp_path, tiny_overrides)
    loader = build_train_loader(config, build_dataset(config, "train"))
    assert not isinstance(stream_source(loader), AlternatingSampler)


def test_loader_alternates_labeled_and_mixed_batches(tmp_path, tiny_overrides):
    pseudo = tmp_path / "pseudo.json"
    config = tiny_config(tmp_path, tiny_overrides, f"data.pseudo_labels_json={pseudo}", "data.flip_prob=0.0")
    write_pseudo_labels(config, pseudo)
    train_set = build_dataset(config, "train")
    loader = build_train_loader(config, train_set)
    assert isinstance(stream_source(loader), AlternatingSampler)
    seen_pseudo = 0
    for _ in range(4):  # epochs
        ids = [[t["image_id"] for t in batch.targets] for batch in loader]
        assert len(ids) == 2 * (8 // 2)
        assert all(len(b) == 2 for b in ids)
        assert all(i <= 8 for batch in ids[0::2] for i in batch)
        for batch_index, batch in enumerate(loader):
            for target in batch.targets:
                if target["image_id"] > 1000:
                    seen_pseudo += 1
                    assert batch_index % 2 == 1
                    # The pseudo box [4, 6, 20, 10] (xywh) as a hard target, labels contiguous from 0.
                    assert target["boxes"].tolist() == [[4.0, 6.0, 24.0, 16.0]]
                    assert target["labels"].tolist() == [0]
    assert seen_pseudo > 0


def test_pseudo_labels_with_other_categories_are_refused(tmp_path, tiny_overrides):
    pseudo = tmp_path / "pseudo.json"
    config = tiny_config(tmp_path, tiny_overrides, f"data.pseudo_labels_json={pseudo}")
    write_pseudo_labels(config, pseudo, category_offset=10)
    with pytest.raises(DatasetError, match="category ids"):
        build_train_loader(config, build_dataset(config, "train"))


def test_pseudo_label_images_must_be_named_without_an_unlabeled_split(tmp_path, tiny_overrides):
    pseudo = tmp_path / "pseudo.json"
    labeled = tiny_config(tmp_path, tiny_overrides)
    write_pseudo_labels(labeled, pseudo)
    config = tiny_config(tmp_path, tiny_overrides, "data.synthetic.num_unlabeled=0", f"data.pseudo_labels_json={pseudo}")
    with pytest.raises(ConfigError, match="data.pseudo_labels_images must be set"):
        build_train_loader(config, build_dataset(config, "train"))
    # Naming the folder explicitly works.
    folder = resolve_data_paths(labeled)["unlabeled_images"]
    config["data"]["pseudo_labels_images"] = str(folder)
    assert isinstance(stream_source(build_train_loader(config, build_dataset(config, "train"))), AlternatingSampler)
