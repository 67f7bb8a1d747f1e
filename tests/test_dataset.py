"""PortraitDataset: tensors in the model's conventions, same-identity references, splits, resizing, shards, mixtures."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rgbd_portrait.data.dataset import (
    PortraitDataset,
    PortraitMixture,
    backdrop_colour,
    observed_depth_region,
    resize_sample_tensors,
)
from rgbd_portrait.data.sample_format import PortraitSample, write_sample, write_sequence
from rgbd_portrait.data.shards import pack_shards
from rgbd_portrait.data.synth import render_dataset
from rgbd_portrait.errors import UserInputError

SIZE = 32


def _sample(identity: str, split: str, seed: int, *, depth_source: str = "exact") -> PortraitSample:
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    mask = (rows - 16) ** 2 + (columns - 16) ** 2 < (8 + seed % 5) ** 2
    depth = np.where(mask, 1.0 + 0.01 * rows + 0.001 * seed, 0.0).astype(np.float32)
    return PortraitSample(
        rgb=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        depth=depth,
        mask=mask,
        meta={"identity": identity, "split": split, "depth_source": depth_source},
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    seed = 0
    for identity, split, count in (("anna", "train", 3), ("bo", "train", 1), ("cy", "val", 2)):
        for index in range(count):
            write_sample(root / split / f"{identity}_{index}", _sample(identity, split, seed))
            seed += 1
    # A sample as `rgbd-portrait prepare` writes it: pseudo-depth, its own folder layout.
    write_sample(root / "prepared" / "photo_7", _sample("dee", "train", 99, depth_source="pseudo"))
    write_sequence(
        root / "sequences" / "talk",
        (_sample("anna", "train", 50 + i) for i in range(2)),
        meta={"identity": "anna", "split": "train"},
        audio=np.zeros(1600, np.float32),
    )
    return root


def test_items_follow_the_model_conventions(root):
    dataset = PortraitDataset(root)
    assert len(dataset) == 5  # anna x3, bo, dee; sequence frames and val left out
    keys = [entry.key for entry in dataset.entries]
    assert keys == sorted(keys) and "train/anna_0" in keys
    item = dataset[keys.index("train/anna_0")]
    assert item["rgb"].shape == (3, SIZE, SIZE) and item["rgb"].dtype == torch.float32
    assert item["rgb"].min() >= -1 and item["rgb"].max() <= 1
    mask = item["mask"]
    assert mask.shape == (1, SIZE, SIZE) and set(mask.unique().tolist()) == {0.0, 1.0}
    depth = item["depth"]
    assert depth.shape == (1, SIZE, SIZE)
    assert (depth[mask == 0] == 1.0).all()
    assert depth[mask == 1].min() == -1.0 and depth[mask == 1].max() == 1.0
    raw = torch.from_numpy(_sample("anna", "train", 0).depth)[None]
    near, far = item["depth_range"]
    assert torch.isclose(near, torch.quantile(raw[mask == 1], 0.02))
    assert torch.isclose(far, torch.quantile(raw[mask == 1], 0.98))
    assert item["identity"] == "anna" and item["depth_source"] == "exact"
    assert {dataset[i]["depth_source"] for i in range(len(dataset))} == {"exact", "pseudo"}


def test_items_come_on_a_flat_backdrop_too(root):
    dataset = PortraitDataset(root)
    for index, entry in enumerate(dataset.entries):
        item = dataset.get(index, epoch=0)
        person = item["mask"].expand(3, -1, -1) > 0.5
        colour = backdrop_colour(entry.key).view(3, 1, 1).expand(3, SIZE, SIZE)
        assert torch.equal(item["rgb_on_backdrop"][person], item["rgb"][person])
        assert torch.equal(item["rgb_on_backdrop"][~person], colour[~person])
    # The reference comes on its own backdrop: the one its own item has.
    anna = [index for index, entry in enumerate(dataset.entries) if entry.identity == "anna"]
    item = dataset.get(anna[0], epoch=0)
    reference = next(other for other in anna if torch.equal(dataset.get(other, epoch=0)["rgb"], item["reference_rgb"]))
    assert torch.equal(item["reference_rgb_on_backdrop"], dataset.get(reference, epoch=0)["rgb_on_backdrop"])


def test_backdrops_are_fixed_per_key_black_for_about_half():
    colours = [backdrop_colour(f"person_{index}") for index in range(400)]
    assert torch.equal(backdrop_colour("person_3"), colours[3])
    black = sum(bool((colour == -1).all()) for colour in colours)
    assert 160 < black < 240
    others = torch.stack([colour for colour in colours if not (colour == -1).all()])
    assert others.min() >= -1 and others.max() <= 1 and others.std() > 0.4


def test_reference_is_another_image_of_the_same_identity(root):
    dataset = PortraitDataset(root, seed=1)
    anna = [i for i, entry in enumerate(dataset.entries) if entry.identity == "anna"]
    references = set()
    for epoch in range(6):
        for index in anna:
            reference = dataset.reference_index(index, epoch=epoch)
            assert reference != index and dataset.entries[reference].identity == "anna"
            references.add((index, reference))
        item = dataset.get(anna[0], epoch=epoch)
        expected = dataset.get(dataset.reference_index(anna[0], epoch=epoch), epoch=epoch)["rgb"]
        assert torch.equal(item["reference_rgb"], expected)
    assert len(references) > len(anna)  # the pairing changes between epochs
    # Deterministic given seed and epoch; set_epoch drives __getitem__.
    assert PortraitDataset(root, seed=1).reference_index(anna[0], epoch=3) == dataset.reference_index(anna[0], epoch=3)
    dataset.set_epoch(4)
    assert torch.equal(dataset[anna[0]]["reference_rgb"], dataset.get(anna[0], epoch=4)["reference_rgb"])
    # An identity with a single image is its own reference, mirrored.
    (bo,) = [i for i, entry in enumerate(dataset.entries) if entry.identity == "bo"]
    assert dataset.reference_index(bo, epoch=0) == bo
    assert torch.equal(dataset[bo]["reference_rgb"], dataset[bo]["rgb"].flip(-1))


def test_splits_sequences_and_bad_arguments(root):
    assert {entry.identity for entry in PortraitDataset(root, split="val").entries} == {"cy"}
    assert len(PortraitDataset(root, split=None)) == 7
    assert len(PortraitDataset(root, include_sequences=True)) == 7
    with pytest.raises(UserInputError, match="split"):
        PortraitDataset(root, split="holdout")
    with pytest.raises(UserInputError, match="multiple of 8"):
        PortraitDataset(root, resolution=20)
    with pytest.raises(UserInputError, match="not found"):
        PortraitDataset(root / "missing")


def test_resizing_keeps_depth_off_the_background(root):
    item = PortraitDataset(root, resolution=16)[0]
    assert item["rgb"].shape == (3, 16, 16) and item["depth"].shape == (1, 16, 16)
    rgb = torch.rand(3, 32, 32) * 2 - 1
    depth = torch.zeros(1, 32, 32)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    depth[mask > 0] = 2.0
    small_rgb, small_depth, small_mask = resize_sample_tensors(rgb, depth, mask, 16)
    assert (small_depth[small_mask > 0] == 2.0).all() and (small_depth[small_mask == 0] == 0).all()
    assert small_mask.sum() == 64 and small_rgb.abs().max() <= 1
    large = resize_sample_tensors(rgb, depth, mask, 64)
    assert large[2].sum() == 4 * mask.sum() and set(large[1].unique().tolist()) == {0.0, 2.0}


def test_default_collate_batches_items(root):
    batch = next(iter(DataLoader(PortraitDataset(root), batch_size=2)))
    assert batch["rgb"].shape == (2, 3, SIZE, SIZE) and batch["reference_rgb"].shape == (2, 3, SIZE, SIZE)
    assert batch["depth_range"].shape == (2, 2) and len(batch["identity"]) == 2


def test_shards_read_the_same_as_folders(root, tmp_path):
    written = pack_shards(root, tmp_path / "shards", samples_per_shard=2, show_progress=False)
    assert [path.name for path in written] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
        "val-000000.tar",
    ]
    folders, shards = PortraitDataset(root, split=None), PortraitDataset(tmp_path / "shards", split=None)
    assert len(shards) == len(folders) == 7
    by_content = {}
    for dataset in (folders, shards):
        for index in range(len(dataset)):
            item = dataset.get(index, epoch=0)
            by_content.setdefault(item["identity"], []).append(item["rgb"].sum().item())
    for values in by_content.values():
        assert sorted(values[: len(values) // 2]) == sorted(values[len(values) // 2 :])
    with pytest.raises(UserInputError, match="must not be inside"):
        pack_shards(root, root / "shards", show_progress=False)
    single = PortraitDataset(written[-1], split=None)
    assert len(single) == 2 and {entry.identity for entry in single.entries} == {"cy"}


def test_reads_the_studio_output(tmp_path):
    render_dataset(tmp_path / "set", identities=3, samples_per_identity=2, size=16, relights=0, show_progress=False)
    dataset = PortraitDataset(tmp_path / "set", split="train", resolution=8)
    assert len(dataset) == 2 and dataset.identities == [dataset.entries[0].identity]
    item = dataset[0]
    assert item["rgb"].shape == (3, 8, 8) and item["depth_source"] == "exact"
    assert dataset.entries[dataset.reference_index(0)].identity == item["identity"]


def _with_landmarks(sample: PortraitSample, corners: list[tuple[float, float]]) -> PortraitSample:
    sample.meta["face_landmarks"] = [[x, y, 1.0] for x, y in corners]
    return sample


def test_observed_depth_is_the_face_for_pseudo_depth_and_everything_for_exact_depth():
    mask = torch.ones(1, SIZE, SIZE)
    exact = {"depth_source": "exact", "face_landmarks": [[8, 8, 1], [20, 8, 1], [8, 20, 1]]}
    assert torch.equal(observed_depth_region(exact, mask, SIZE), mask)
    assert torch.equal(observed_depth_region({"depth_source": "pseudo"}, mask, SIZE), mask)
    square = {"depth_source": "pseudo", "face_landmarks": [[8, 8, 1], [23, 8, 1], [23, 23, 1], [8, 23, 1], [15, 15, 1]]}
    observed = observed_depth_region(square, mask, SIZE)[0]
    assert observed[8:24, 8:24].all() and observed.sum() == 16 * 16
    # Stored at twice the size: the outline scales with the crop.
    half = observed_depth_region(square, mask, SIZE * 2)[0]
    assert half[4:12, 4:12].all() and half.sum() <= 9 * 9
    # Never outside the person.
    person = torch.zeros(1, SIZE, SIZE)
    person[..., :16] = 1
    assert observed_depth_region(square, person, SIZE)[0].sum() == 16 * 8


def test_items_say_how_far_their_depth_is_observed(tmp_path):
    write_sample(
        tmp_path / "real",
        _with_landmarks(_sample("ed", "train", 3, depth_source="pseudo"), [(10, 10), (22, 10), (16, 22)]),
    )
    write_sample(tmp_path / "studio", _sample("fay", "train", 4))
    dataset = PortraitDataset(tmp_path)
    real, studio = (dataset[[entry.key for entry in dataset.entries].index(key)] for key in ("real", "studio"))
    assert real["pseudo_depth"] == 1 and studio["pseudo_depth"] == 0
    assert 0 < real["depth_observed"].sum() < real["mask"].sum()
    assert torch.equal(studio["depth_observed"], torch.ones_like(studio["mask"]))


def test_a_mixture_interleaves_its_parts_and_weighs_them_by_share(tmp_path):
    for index in range(6):
        write_sample(tmp_path / "big" / f"s{index}", _sample(f"p{index % 3}", "train", index))
    write_sample(tmp_path / "small" / "s0", _sample("p0", "train", 10))
    big, small = PortraitDataset(tmp_path / "big"), PortraitDataset(tmp_path / "small")
    mixture = PortraitMixture([big, small], [1.0, 3.0])
    assert len(mixture) == 7
    assert [location[0] for location in mixture.locations[:3]] == [0, 1, 0]
    # Same names in two parts are two identities; references stay in their part.
    assert len({entry.key for entry in mixture.entries}) == 7
    assert len({entry.identity for entry in mixture.entries}) == 4
    lone = mixture.locations.index((1, 0))
    assert mixture.reference_index(lone, epoch=2) == lone
    assert torch.equal(mixture[lone]["reference_rgb"], small[0]["rgb"].flip(-1))
    for item in range(len(mixture)):
        assert mixture.locations[mixture.reference_index(item, epoch=1)][0] == mixture.locations[item][0]
    shares = [float(mixture.sample_weights[[n == part for n, _ in mixture.locations]].sum()) for part in (0, 1)]
    assert shares == pytest.approx([1.0, 3.0])
    with pytest.raises(ValueError, match="resolution"):
        PortraitMixture([big, PortraitDataset(tmp_path / "small", resolution=16)], [1.0, 1.0])
