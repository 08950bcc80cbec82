import numpy as np

from anomaly_zoo.viz import overlay_heatmap


def test_overlay_uses_the_fixed_value_range_and_outlines_the_mask():
    image = np.full((8, 8, 3), 128, np.uint8)
    anomaly_map = np.zeros((8, 8))
    anomaly_map[2:4, 2:4] = 10.0
    mask = np.zeros((8, 8), bool)
    mask[5:8, 5:8] = True
    out = overlay_heatmap(image, anomaly_map, value_range=(0.0, 10.0), alpha=0.5, mask=mask)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    hot, cold = out[2, 2], out[0, 0]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # red where the score is high, blue where it is low
    assert (out[5, 5] == (0, 255, 0)).all()  # mask outline
    # Values beyond the range saturate instead of rescaling the whole picture.
    brighter = overlay_heatmap(image, anomaly_map * 100, value_range=(0.0, 10.0), alpha=0.5)
    np.testing.assert_array_equal(brighter[2, 2], hot)
