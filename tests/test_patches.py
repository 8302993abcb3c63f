"""Patch sampling for 3D training: corners inside the volume, a third of a batch forced onto foreground (nnU-Net's
share), every class drawn alike, and volumes smaller than the patch covered whole."""

import numpy as np
import pytest

from segkit.data.patches import FOREGROUND_SHARE, PatchSampler, foreground_voxels


def volume_with_a_small_structure() -> np.ndarray:
    labels = np.zeros((40, 60, 50), dtype=np.uint8)
    labels[30:34, 10:14, 40:44] = 1  # 64 voxels: 0.05 % of the volume
    labels[5:7, 50:52, 3:5] = 2  # a rarer class, 8 voxels
    return labels


def covers(patch, size, labels, value) -> bool:
    box = tuple(slice(c, c + p) for c, p in zip(patch.corner, size))
    return bool((labels[box] == value).any())


def test_a_third_of_a_batch_is_forced_onto_foreground_and_every_class_is_drawn():
    labels = volume_with_a_small_structure()
    fg = foreground_voxels(labels)
    assert sorted(fg) == [1, 2] and len(fg[1]) == 64 and len(fg[2]) == 8
    size = (16, 16, 16)
    sampler = PatchSampler(labels.shape, size, fg)
    rng = np.random.default_rng(0)
    patches = [p for _ in range(300) for p in sampler.batch(rng, 6)]
    forced = [p for p in patches if p.forced]
    assert len(forced) == round(6 * FOREGROUND_SHARE) * 300  # the last two of every six
    assert all(covers(p, size, labels, 1) or covers(p, size, labels, 2) for p in forced)
    # classes drawn alike, not by their voxel counts (8 against 64)
    rare = sum(covers(p, size, labels, 2) for p in forced) / len(forced)
    assert 0.4 < rare < 0.6
    # every patch lies inside the volume
    assert all(0 <= c <= s - p for q in patches for c, s, p in zip(q.corner, labels.shape, size))
    # uniform patches rarely meet so small a structure: forcing is what shows it to the network
    uniform = [p for p in patches if not p.forced]
    assert sum(covers(p, size, labels, 1) for p in uniform) / len(uniform) < 0.1
    assert sampler.batch(rng, 2)[-1].forced  # one forced even where a third rounds to none
    assert not any(p.forced for p in PatchSampler(labels.shape, size, fg, share=0).batch(rng, 6))


def test_an_empty_case_and_a_volume_smaller_than_the_patch():
    rng = np.random.default_rng(1)
    empty = PatchSampler((20, 30, 40), (8, 8, 8), foreground_voxels(np.zeros((20, 30, 40), np.uint8)))
    assert not any(p.forced for p in empty.batch(rng, 6))  # nothing to force onto: uniform
    small = PatchSampler((5, 30, 6), (8, 8, 8), {1: np.array([[2, 20, 3]])})
    for p in small.batch(rng, 6):
        assert p.corner[0] == 0 and p.corner[2] == 0 and 0 <= p.corner[1] <= 22
    assert small.sample(rng, forced=True).corner == (0, 16, 0)  # centred on (2, 20, 3), clipped inside
    with pytest.raises(ValueError, match="number of axes"):
        PatchSampler((5, 30), (8, 8, 8))
    many = foreground_voxels(np.ones((30, 30, 30), np.uint8), most=100)
    assert len(many[1]) == 100  # a sample of a large class's voxels
