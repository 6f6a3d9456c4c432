"""The 3D nodule detector: candidates, patches, the merge with a 2D mask, training and the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungtumor.core.config import NoduleConfig
from lungtumor.core.config_io import load_config, validate
from lungtumor.core.errors import InputError
from lungtumor.imaging.resample import iso_shape, resample, resample_sparse
from lungtumor.inference.checkpoint import add_detector_to_checkpoint
from lungtumor.inference.detector import (
    CKPT_KEY,
    cut_patches,
    detector_probability,
    extract_patches,
    find_candidates,
    load_detector,
    paste_max,
    score_candidates,
)
from lungtumor.models.nodule3d import NodulePatchNet, normalise_hu
from lungtumor.postprocessing.detector import add_missed_lesions, drop_unconfirmed_small
from lungtumor.training.detector import case_patches
from lungtumor.training.detector_module import PatchSet, train_detector


def _chest(shape=(40, 60, 60), h=2.0):
    """A box of soft tissue (40 HU) holding two 'lungs' (-850 HU), a 9 mm nodule in the left one and a
    3 mm-wide vessel along z in the right one. Returns (hu, nodule centre, nodule mask)."""
    hu = np.full(shape, 40.0, np.float32)
    hu[5:35, 8:52, 6:28] = -850.0
    hu[5:35, 8:52, 32:54] = -850.0
    z, y, x = np.indices(shape)
    centre = (20, 30, 17)
    r = 4.5 / h
    nodule = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r**2
    hu[nodule] = 30.0
    vessel = ((y - 25) ** 2 + (x - 43) ** 2 <= (1.5 / h) ** 2) & (z >= 5) & (z < 35)
    hu[vessel] = 30.0
    return hu, np.array(centre), nodule


def test_candidates_find_the_nodule_and_nothing_without_lungs():
    hu, centre, _ = _chest()
    c = find_candidates(hu, 2.0, (2.5, 4.0, 6.0), 250.0, -600.0)
    assert len(c) > 0
    assert np.abs(c - centre).sum(axis=1).min() <= 1  # a candidate at the nodule's centre
    soft = np.full_like(hu, 40.0)  # no air at all: no lung, no candidates
    assert len(find_candidates(soft, 2.0, (2.5, 4.0), 250.0, -600.0)) == 0


def test_patches_paste_back_where_they_were_cut():
    rng = np.random.default_rng(0)
    vol = rng.random((12, 14, 16)).astype(np.float32)
    centres = np.array([[0, 0, 0], [6, 7, 8], [11, 13, 15]])
    cubes = extract_patches(vol, centres, 8, 0.0)
    assert cubes.shape == (3, 8, 8, 8)
    assert cubes[1, 4, 4, 4] == vol[6, 7, 8] and cubes[0, 0, 0, 0] == 0.0  # padding outside the volume
    back = paste_max(vol.shape, centres, cubes)
    covered = paste_max(vol.shape, centres, np.ones_like(cubes)) > 0
    assert np.array_equal(back[covered], vol[covered]) and not back[~covered].any()


def test_resample_to_iso_and_back():
    shape = iso_shape((11, 20, 20), (3.0, 1.0, 1.0), 2.0)
    assert shape == (16, 11, 11)
    a = np.linspace(0, 1, 11 * 20 * 20, dtype=np.float32).reshape(11, 20, 20)
    assert np.allclose(resample(resample(a, shape), a.shape), a, atol=0.02)  # linear data survives


@pytest.mark.parametrize(
    ("shape_in", "shape_out", "box"),
    [
        ((60, 41, 41), (30, 38, 38), (slice(20, 28), slice(5, 13), slice(30, 38))),  # iso frame -> 2D frame
        ((10, 12, 14), (30, 7, 40), (slice(0, 3), slice(9, 12), slice(0, 14))),  # up and down, at the edges
    ],
)
def test_sparse_resample_equals_the_whole_one(shape_in, shape_out, box):
    a = np.zeros(shape_in, np.float32)
    a[box] = np.random.default_rng(1).random(a[box].shape) + 0.1
    np.testing.assert_allclose(resample_sparse(a, shape_out), resample(a, shape_out), rtol=0, atol=1e-6)
    assert not resample_sparse(np.zeros(shape_in, np.float32), shape_out).any()


def test_missed_lesions_are_added_and_found_ones_left_alone():
    prob = np.zeros((10, 20, 20), np.float32)
    prob[2:5, 2:6, 2:6] = 0.9  # a lesion the 2D model found
    det = np.zeros_like(prob)
    det[3:6, 4:8, 4:8] = 0.8  # the detector sees it too, a bit elsewhere
    det[6:9, 12:16, 12:16] = 0.95  # and one the 2D model missed
    for threshold in (0.5, 0.7):
        out = add_missed_lesions(prob, det, threshold)
        near_found = np.zeros(prob.shape, bool)
        near_found[1:7, 1:9, 1:9] = True
        assert np.array_equal(out[near_found], prob[near_found])  # the found lesion is untouched
        assert (out[6:9, 12:16, 12:16] >= threshold).all()  # the missed one is added
        assert out[5, 10, 10] < threshold  # nothing else crosses the threshold
        # the detector's 0.5 maps onto the threshold
        edge = det.copy()
        edge[6:9, 12:16, 12:16] = 0.5
        assert np.allclose(add_missed_lesions(prob, edge, threshold)[7, 13, 13], threshold)
    assert np.array_equal(add_missed_lesions(prob, np.zeros_like(prob), 0.5), prob)
    # a detector lesion under min_voxels is not added (its false positives are mostly small)
    assert np.array_equal(add_missed_lesions(prob, det, 0.5, min_voxels=3 * 4 * 4 + 1), prob)
    assert (add_missed_lesions(prob, det, 0.5, min_voxels=3 * 4 * 4)[6:9, 12:16, 12:16] >= 0.5).all()


def _patchset(n=24, p=8, seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.normal(-700, 200, (n, p, p, p)).astype(np.float16)
    seg = np.zeros((n, p, p, p), np.uint8)
    lesion = np.full(n, -1)
    for i in range(0, n, 3):  # every third cube is centred on a bright blob
        hu[i, 2:6, 2:6, 2:6] = 40
        seg[i, 2:6, 2:6, 2:6] = 1
        lesion[i] = i // 6
    return PatchSet(hu, seg, lesion)


def test_detector_training_is_seeded_and_needs_both_kinds():
    cfg = NoduleConfig(patch=8, channels=(4, 8, 8), steps=3, batch_size=4)
    a = train_detector(_patchset(), cfg, seed=1, bf16=False)
    b = train_detector(_patchset(), cfg, seed=1, bf16=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    ps = _patchset()
    with pytest.raises(InputError, match="tumour and non-tumour"):
        train_detector(PatchSet(ps.hu, ps.seg, np.full(len(ps.lesion), -1)), cfg, bf16=False)


def test_detector_learns_to_find_a_nodule_among_vessels():
    """Trained on one chest phantom's candidates, it scores the nodule above every other candidate and
    segments it."""
    hu, centre, nodule = _chest()
    cfg = NoduleConfig(patch=12, channels=(4, 8, 16), steps=150, batch_size=16, lr=1e-2, threshold=0.5)
    cubes, masks, at = case_patches(hu, nodule.astype(np.uint8), cfg)
    assert (at > 0).any() and (at == 0).any()
    net = train_detector(PatchSet(cubes, masks, np.where(at > 0, at, -1)), cfg, seed=0, bf16=False)
    centres = find_candidates(hu, 2.0, cfg.radii_mm, cfg.min_response, cfg.min_hu)
    scores, segs = score_candidates(net, hu, centres, cfg, bf16=False)
    on_nodule = nodule[tuple(centres.T)]
    assert scores[on_nodule].max() > scores[~on_nodule].max()
    best = int(np.argmax(scores))
    found = paste_max(hu.shape, centres[best : best + 1], segs[best : best + 1]) >= 0.5
    assert 2 * (found & nodule).sum() / (found.sum() + nodule.sum()) > 0.5  # it segments the nodule
    prob = detector_probability(net, hu, hu.shape, cfg, bf16=False)
    assert prob.shape == hu.shape


def test_detector_travels_in_the_checkpoint(tmp_path):
    cfg = NoduleConfig(enabled=True, patch=8, channels=(4, 8, 8), steps=2, batch_size=4)
    net = train_detector(_patchset(), cfg, bf16=False)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lungtumor": {}}}, path)
    with pytest.raises(InputError, match="no nodule detector"):
        load_detector(torch.load(path, weights_only=True), cfg, path)
    add_detector_to_checkpoint(path, net)
    ck = torch.load(path, weights_only=True)
    assert CKPT_KEY in ck
    back = load_detector(ck, cfg, path)
    for va, vb in zip(net.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(va, vb)
    assert load_detector(ck, NoduleConfig(enabled=False), path) is None
    with pytest.raises(InputError, match="does not match"):
        load_detector(ck, NoduleConfig(enabled=True, channels=(8, 8, 8)), path)


def test_nodule_config_is_checked():
    cfg = load_config(None, "demo")
    cfg.nodule.threshold = 1.5
    with pytest.raises(InputError, match="nodule.threshold"):
        validate(cfg)
    cfg = load_config(None, "demo")
    cfg.nodule.patch = 10
    with pytest.raises(InputError, match="nodule.patch"):
        validate(cfg)


def test_flip_tta_scores_only_what_can_reach_the_threshold():
    """With ``tta`` each candidate's score and cube are the means over the 8 axis flips; pruning the
    candidates that cannot reach the threshold gives the same scores and cubes above it as flipping every
    candidate."""
    hu, _, _ = _chest()
    cfg = NoduleConfig(patch=8, channels=(4, 8, 8))
    torch.manual_seed(0)
    net = NodulePatchNet(cfg.channels).eval()
    centres = find_candidates(hu, 2.0, cfg.radii_mm, cfg.min_response, cfg.min_hu)
    plain, _ = score_candidates(net, hu, centres, cfg, bf16=False)
    logit = np.log(plain / (1 - plain))
    k = 3.0 / max(float(logit.std()), 1e-6)
    with torch.no_grad():  # logits k (l - mean) + 4: scores spread over (0.5, 1), so the bound prunes some
        net.score.weight.mul_(k)
        net.score.bias.copy_(k * (net.score.bias - float(logit.mean())) + 4.0)
    plain, _ = score_candidates(net, hu, centres, cfg, bf16=False)
    full, full_cubes = score_candidates(net, hu, centres, cfg, bf16=False, tta=True)
    assert full.shape == plain.shape and full_cubes.shape == (len(centres), 8, 8, 8)
    assert not np.allclose(full, plain)  # a random net is not flip-invariant
    # by hand for the first candidate: the mean over the 8 flips of its cube, segmentations flipped back
    padded = np.pad(np.clip(hu, -1000, 400), 4, constant_values=-1000)
    cube = normalise_hu(torch.from_numpy(cut_patches(padded, centres[:1], 8).astype(np.float32))[:, None])
    flips = [[d for d in (2, 3, 4) if k >> (d - 2) & 1] for k in range(8)]
    with torch.no_grad():
        outs = [net(cube.flip(f) if f else cube) for f in flips]
    by_hand = np.mean([torch.sigmoid(o[0]).item() for o in outs])
    seg = np.mean(
        [torch.sigmoid(o[1]).flip([d - 1 for d in f]).numpy() for o, f in zip(outs, flips, strict=True)], 0
    )
    assert full[0] == pytest.approx(by_hand, rel=1e-5)
    np.testing.assert_allclose(full_cubes[0], seg[0], rtol=1e-5, atol=1e-6)
    # a threshold whose bound 8t - 7 lies inside the one-pass scores: some candidates are pruned
    t = float(np.quantile(full, 0.75))
    bound = 8 * t - 7
    assert (plain < bound).any() and (plain >= bound).any()
    pruned, cubes = score_candidates(net, hu, centres, cfg, bf16=False, tta=True, seg_from=t)
    above = full >= t
    assert above.any()
    np.testing.assert_allclose(pruned[above], full[above], rtol=1e-6)
    assert (pruned[~above] < t).all()
    np.testing.assert_array_equal(pruned[plain < bound], plain[plain < bound])  # not flipped
    np.testing.assert_allclose(cubes, full_cubes[above], rtol=1e-5, atol=1e-6)


def test_small_2d_lesions_stand_only_where_the_detector_agrees():
    prob = np.zeros((20, 30, 30), np.float32)
    prob[2:4, 2:4, 2:4] = 0.9  # 8 voxels, no detector lesion near: dropped
    prob[10:12, 2:4, 2:4] = 0.8  # 8 voxels, the detector's lesion touches it: kept
    prob[2:8, 15:25, 15:25] = 0.95  # 600 voxels: large, kept whatever the detector says
    prob[15, 20, 20] = 0.3  # below the threshold: untouched
    det = np.zeros_like(prob)
    det[12:14, 2:4, 2:4] = 0.7  # adjacent (26-neighbourhood) to the second one
    out = drop_unconfirmed_small(prob, det, 0.5, min_voxels=9)
    assert out[2:4, 2:4, 2:4].max() == 0
    np.testing.assert_array_equal(out[10:12, 2:4, 2:4], prob[10:12, 2:4, 2:4])
    np.testing.assert_array_equal(out[2:8, 15:25, 15:25], prob[2:8, 15:25, 15:25])
    assert out[15, 20, 20] == np.float32(0.3)
    assert prob[2, 2, 2] == np.float32(0.9)  # the input is not changed
    # one voxel further away the detector no longer confirms it
    det2 = np.zeros_like(prob)
    det2[13:15, 2:4, 2:4] = 0.7
    assert drop_unconfirmed_small(prob, det2, 0.5, min_voxels=9)[10:12, 2:4, 2:4].max() == 0
    np.testing.assert_array_equal(drop_unconfirmed_small(prob, det, 0.5, min_voxels=0), prob)
