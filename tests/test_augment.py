"""Training-time image augmentation (model config aug_crop_scale, aug_color): random crops that change only the
intrinsics (raymaps move with the pixels, targets and camera poses stay), brightness/contrast jitter, draws keyed
so that batches do not depend on the worker count."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from posevla.geometry.raymap import raymap
from posevla.model.config import PoseVLAConfig
from posevla.model.policy import PoseVLAPolicy
from posevla.tools.synthetic_episode import write_demo_episode
from posevla.training.augment import jitter_colour, random_region
from posevla.training.episode_dataset import EpisodeChunkDataset
from posevla.training.loader import BatchBuilder, EpochBatchOrder, make_loader

TINY = dict(image_size=28, patch_size=14, chunk_length=8, flow_steps=4, max_prompt_tokens=24,
            vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
            text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "head_dim": 16},
            expert={"hidden_size": 32, "intermediate_size": 128})


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("aug") / "data"
    for seed in range(2):
        write_demo_episode(root, seconds=1.0, fps=15.0, width=96, height=72, cube_xy=(0.3 + 0.03 * seed, 0.1),
                           seed=seed)
    return sorted((root / "pick_red_cube").glob("*.h5"))


def test_random_region_lies_inside_its_base_with_the_drawn_scale() -> None:
    rng = np.random.default_rng(0)
    base = [0.1, 0.2, 0.5, 0.6]
    sides = []
    for _ in range(500):
        x0, y0, x1, y1 = random_region(base, 0.8, rng)
        assert 0.1 - 1e-12 <= x0 < x1 <= 0.5 + 1e-12 and 0.2 - 1e-12 <= y0 < y1 <= 0.6 + 1e-12
        assert (x1 - x0) == pytest.approx(y1 - y0)  # the aspect ratio of the base (square here) is kept
        sides.append((x1 - x0) / 0.4)
    assert min(sides) >= 0.8 - 1e-12 and max(sides) <= 1.0 and min(sides) < 0.82 and max(sides) > 0.98
    assert random_region(None, 1.0, rng) == [0.0, 0.0, 1.0, 1.0]  # scale 1: the whole image, nothing moves


def test_colour_jitter_scales_brightness_and_contrast_within_the_amount() -> None:
    rng = np.random.default_rng(1)
    img = np.random.default_rng(2).integers(60, 190, size=(20, 20, 3)).astype(np.uint8)
    means, stds = [], []
    for _ in range(200):
        out = jitter_colour(img, 0.2, rng)
        assert out.dtype == np.uint8 and out.shape == img.shape
        means.append(out.mean() / img.mean())
        stds.append(out.std() / img.std())
    assert 0.79 < min(means) < 0.85 and 1.15 < max(means) < 1.21  # brightness factor in [0.8, 1.2]
    assert 0.79 < min(stds) < 0.85 and 1.15 < max(stds) < 1.21  # contrast factor in [0.8, 1.2]


def test_augmented_samples_change_intrinsics_only_and_are_keyed(episodes: list[Path]) -> None:
    plain_cfg = PoseVLAConfig(**TINY)
    cfg = dataclasses.replace(plain_cfg, aug_crop_scale=0.7, aug_color=0.2)
    plain = EpisodeChunkDataset(episodes, plain_cfg)
    data = EpisodeChunkDataset(episodes, cfg)
    data.aug_seed = 5
    assert data.augments and not plain.augments
    assert plain.augmented(3, 17) is not None  # augmentation off: the plain sample
    ref, a, b, a2 = plain[3], data.augmented(3, 17), data.augmented(3, 18), data.augmented(3, 17)
    np.testing.assert_array_equal(a.actions, ref.actions)  # the targets live in the (unmoved) camera frame
    for name, v in a.observation.views.items():
        r = ref.observation.views[name]
        np.testing.assert_array_equal(v.T_base_cam, r.T_base_cam)
        # the raymap is that of the view's own (cropped) intrinsics: geometry exact
        np.testing.assert_allclose(v.raymap, raymap(v.intrinsics), atol=1e-6)
        assert v.intrinsics.fx > r.intrinsics.fx  # a smaller region fills the input: zoomed in
        np.testing.assert_array_equal(v.rgb, a2.observation.views[name].rgb)  # same key, same draw
        assert not np.array_equal(v.rgb, b.observation.views[name].rgb)  # another key, another draw
        assert not np.array_equal(v.raymap, r.raymap)
    data.close()
    plain.close()


def test_augmented_batches_do_not_depend_on_the_worker_count(episodes: list[Path]) -> None:
    cfg = PoseVLAConfig(**{**TINY, "aug_crop_scale": 0.8, "aug_color": 0.1})
    policy = PoseVLAPolicy.from_config(cfg, device="cpu")
    data = EpisodeChunkDataset(episodes, cfg)
    data.aug_seed = 3
    builder = BatchBuilder(data, policy.batcher)
    batches = {}
    for workers in (0, 2):
        order = EpochBatchOrder(np.arange(len(data)), 3, seed=1, start=4, count=3)
        batches[workers] = list(make_loader(builder, order, workers))
    plain = builder[EpochBatchOrder(np.arange(len(data)), 3, seed=1).batch(4)]  # indices alone: not augmented
    for x, y in zip(batches[0], batches[2]):
        for k in x:
            if k != "build_s":
                assert torch.equal(x[k], y[k]), k
    first = batches[0][0]  # batch 4 augmented vs the same indices plain: other pixels, other rays, same targets
    assert not torch.equal(first["raymaps"], plain["raymaps"])
    assert not torch.equal(first["pixel_values"], plain["pixel_values"])
    assert torch.equal(first["actions"], plain["actions"])
    data.close()


def test_augmentation_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="aug_crop_scale"):
        PoseVLAConfig(**{**TINY, "aug_crop_scale": 0.0})
    with pytest.raises(ValueError, match="aug_color"):
        PoseVLAConfig(**{**TINY, "aug_color": 1.0})
