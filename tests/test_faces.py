import numpy as np
import pytest

from face_detection.boxes import true_runs
from face_detection.keyframes import key_frames, mark_key_frames
from face_detection.loading import load_detector
from lipsync import faces
from lipsync.options import LipSyncOptions
from lipsync.pipeline import source_index, transform_frame


def det(*boxes):
    return np.array([[*b, s] for *b, s in boxes], np.float32).reshape(-1, 5)


def test_key_frames_include_last():
    assert key_frames(11, 5) == [0, 5, 10]
    assert key_frames(12, 5) == [0, 5, 10, 11]
    assert key_frames(1, 5) == [0]
    assert key_frames(0, 5) == []
    stream = list(mark_key_frames("abcdefg", 3))  # a stream whose length is not known in advance
    assert [(i, c) for i, c, key in stream if key] == [(0, "a"), (3, "d"), (6, "g")]
    assert [c for _, c, _ in stream] == list("abcdefg")


def test_refinement_when_face_appears_or_jumps():
    a = det((10, 10, 50, 50, 0.9))
    assert not faces.needs_refinement(a, a + np.array([2, 2, 2, 2, 0], np.float32))
    assert faces.needs_refinement(a, det())
    assert faces.needs_refinement(a, det((200, 10, 240, 50, 0.9)))
    assert not faces.needs_refinement(det(), det())


def test_select_face_follows_chosen_face_across_size_swap():
    # two faces: A (left) starts larger, B (right) grows past it; index 0 picks A and keeps following it
    dets = {}
    for i in range(10):
        a = (10 + i, 10, 60 + i, 60, 0.9)
        b = (200, 10, 200 + 30 + 6 * i, 40 + 6 * i, 0.95)
        dets[i] = det(b, a)
    boxes = faces.select_face(dets, 10, face_index=0)
    assert np.allclose(boxes[:, 0], 10 + np.arange(10))
    second = faces.select_face(dets, 10, face_index=1)
    assert np.allclose(second[:, 0], 200)
    near = faces.select_face(dets, 10, face_point=(210, 20))
    assert np.allclose(near[:, 0], 200)
    top = faces.select_face(dets, 10, top_score=True)  # inference.py: the detector's best box each frame
    assert np.allclose(top[:, 0], 200)


def test_select_face_leaves_faceless_frames_nan():
    boxes = faces.select_face({0: det((1, 2, 30, 40, 0.9)), 1: det(), 3: det((1, 2, 30, 40, 0.9))}, 5)
    assert np.isnan(boxes[[1, 2, 4], 0]).all() and not np.isnan(boxes[[0, 3], 0]).any()


def test_interpolate_undetected_only_between_faces():
    boxes = np.full((11, 4), np.nan)
    boxes[0] = [0, 0, 10, 10]
    boxes[5] = [10, 0, 20, 10]
    out = faces.interpolate_undetected(boxes, [0, 5, 10])  # frame 10 was detected: no face
    assert np.allclose(out[1:5, 0], [2, 4, 6, 8])
    assert np.isnan(out[6:, 0]).all()


def test_finalize_pads_smooths_and_reports_gaps():
    boxes = np.full((40, 4), np.nan)
    boxes[:10] = [20, 20, 60, 60]
    boxes[13:20] = [20, 20, 60, 60]  # 3-frame gap: bridged
    boxes[30:] = [20, 20, 60, 60]  # 10-frame gap with max_gap 5: kept
    out, found = faces.finalize_boxes(boxes, pads=(0, 10, 0, 0), frame_hw=(100, 100), max_gap=5, smooth=True)
    assert true_runs(~found) == [(20, 29)]
    assert (out[found] == [20, 20, 60, 70]).all()
    clamped, _ = faces.finalize_boxes(np.array([[0.0, 80, 50, 95]]), pads=(0, 10, 0, 0), frame_hw=(100, 100),
                                      max_gap=0, smooth=False)
    assert clamped.tolist() == [[0, 80, 50, 100]]


def test_describe_ranges():
    text = faces.describe_ranges([(120, 180), (300, 301)], 25.0)
    assert text == "frames 120-180 (4.8-7.2 s), frames 300-301 (12.0-12.1 s)"
    assert faces.describe_ranges([(i, i) for i in range(0, 20, 2)], 25.0, limit=2).endswith("and 8 more")


def test_source_index_loops():
    assert [source_index(i, 4, "forward") for i in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [source_index(i, 4, "pingpong") for i in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert [source_index(i, 1, "pingpong") for i in range(3)] == [0, 0, 0]


def test_transform_frame_resize_rotate_crop():
    frame = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    out = transform_frame(frame, LipSyncOptions(resize_factor=2, rotate=True, crop=(5, -1, 0, 10)))
    assert out.shape == (25, 10, 3)  # 20x30 after resize, 30x20 after rotation, rows 5: cols :10


def test_options_are_validated():
    from common.errors import InputError

    with pytest.raises(InputError, match="box"):
        LipSyncOptions(box=(10, 5, 0, 10))
    with pytest.raises(InputError, match="loop"):
        LipSyncOptions(loop="backwards")
    assert LipSyncOptions(pads=[1, 2, 3, 4]).pads == (1, 2, 3, 4)


def test_wrong_detector_checkpoint_is_a_weights_error(weights_dir):
    from common.errors import WeightsError

    with pytest.raises(WeightsError, match=r"sfd_face.pth: s3fd checkpoint does not fit.*variant='sfd_face'"):
        load_detector(weights_dir / "sfd_face.pth", "s3fd")


def test_load_detector_runs_winograd_layers_only_when_asked(weights_dir):
    """Direct convolutions unless asked: the Winograd kernels take 4x the weights' memory (see LipSync.detector)."""
    from face_detection.winograd import WinogradConv2d

    det = load_detector(weights_dir / "s3fd.pth", "s3fd")
    assert not any(isinstance(m, WinogradConv2d) for m in det.net.modules())
    det = load_detector(weights_dir / "s3fd.pth", "s3fd", winograd=4)
    layers = [m for m in det.net.modules() if isinstance(m, WinogradConv2d)]
    # the 9 wide layers, and the 3 first ones where the compiled tile transforms run (one thread)
    assert len(layers) == 12 and sum(m.compiled_only for m in layers) == 3


@pytest.mark.parametrize("detection", ["fast", "original"])
@pytest.mark.parametrize("seed", range(20))
def test_boxes_of_a_prefix_are_final(detection, seed):
    """The render pass uses boxes while detection is still going: those it gets must never change."""
    rng = np.random.default_rng(seed)
    options = LipSyncOptions(detection=detection, max_gap=int(rng.integers(0, 12)),
                             detect_every=int(rng.integers(1, 7)))
    n = 160
    # a face drifting, with runs of frames without it (some bridgeable, some not), sometimes a second face
    present = np.ones(n, bool)
    for _ in range(4):
        start = int(rng.integers(0, n))
        present[start:start + int(rng.integers(1, 3 * options.max_gap + 3))] = False
    seen = range(n) if detection == "original" else key_frames(n, options.detect_every)
    dets = {}
    for i in seen:
        x = 40 + 0.7 * i + rng.normal(0, 0.5)
        face = [x, 30.0, x + 60, 100.0, 0.9]
        if not present[i]:
            dets[i] = det()
        else:
            dets[i] = det(face, [200, 10, 230, 40, 0.8]) if i % 7 == 0 else det(face)
    full, full_found = faces.boxes_from_detections(dets, n, options, (240, 320))
    finals = []
    for k in [key + 1 for key in seen]:
        boxes, found, final = faces.prefix_boxes(dets, k, n, options, (240, 320))
        np.testing.assert_array_equal(boxes[:final], full[:final])
        np.testing.assert_array_equal(found[:final], full_found[:final])
        finals.append(final)
    assert finals[-1] == n
    assert finals == sorted(finals)
    # while every frame so far has a face, only the smoothing window holds boxes back
    for k, final in zip([key + 1 for key in seen], finals, strict=True):
        if k < n and present[:k].all():
            assert final == max(0, k - faces.smooth_window(options) + 1)


@pytest.mark.parametrize("gap, decided", [(3, False), (8, False), (9, True)])
def test_a_gap_at_the_end_of_the_detected_frames_holds_back_until_it_is_decided(gap, decided):
    """A run without a face that may still be bridged keeps the boxes before it open; one longer than
    max_gap (never bridged) does not."""
    options = LipSyncOptions(detection="original", max_gap=8)
    k = 40
    dets = {i: det([10.0 + i, 10, 70.0 + i, 80, 0.9]) if i < k - gap else det() for i in range(k)}
    boxes, found, final = faces.prefix_boxes(dets, k, 100, options, (240, 320))
    window = faces.smooth_window(options)
    assert final == (k if decided else k - gap) - window + 1
    assert found[:k - gap].all() and not found[k - gap:].any()
