"""The chest renderer's contract."""

import numpy as np

from lungtumor.data.anatomy import render_anatomy, sample_anatomy
from lungtumor.data.geometry import smooth_noise
from lungtumor.data.lesions import sample_grid


def test_render_anatomy_shapes_dtypes_and_table():
    rng = np.random.default_rng(3)
    an = sample_anatomy(rng)
    grid = sample_grid(rng, an, 64, 24)
    tex = smooth_noise(rng, grid.shape, (5 / grid.dz, 5 / grid.dy, 5 / grid.dx))
    img0, m0 = render_anatomy(an, grid, tex, np.random.default_rng(0), table=False)
    img1, m1 = render_anatomy(an, grid, tex, np.random.default_rng(0), table=True)
    assert img0.shape == grid.shape and img0.dtype == np.float32
    assert list(m0) == ["lung", "side", "soft", "bone", "body", "wall_depth"]
    assert m0["lung"].dtype == bool and m0["side"].dtype == np.int8 and m0["wall_depth"].dtype == np.float32
    assert m0["lung"].any() and m0["bone"].any() and np.all(m0["side"][m0["lung"]] != 0)
    assert not m0["side"][~m0["lung"]].any()
    for key in m0:  # the table changes the image only, outside the body
        assert np.array_equal(m0[key], m1[key])
    changed = img0 != img1
    assert changed.any() and not (changed & m0["body"]).any()
