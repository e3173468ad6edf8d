"""S3FD nets, decoding/NMS and the batched detector against the golden arrays and planted answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_detection import postprocess as pp
from face_detection.boxes import wav2lip_rect
from face_detection.detector import MIN_SIDE, FaceDetector, pooled_side
from face_detection.s3fd import S3FD
from face_detection.sfd_face import SFDFace, SFDOutput
from face_detection.winograd import MIN_COMPILED_CHANNELS, WinogradConv2d, runs_compiled, use_winograd
from tests.weightgen import golden_state_dict, manifest_entries

HEAD_NAMES = [f"{kind}{level}" for level in range(1, 7) for kind in ("cls", "reg")]


@pytest.fixture(scope="module")
def s3fd_sd() -> dict[str, torch.Tensor]:
    return golden_state_dict("s3fd.json")


@pytest.fixture(scope="module")
def sfd_sd() -> dict[str, torch.Tensor]:
    return golden_state_dict("sfd_face.json")


class _OneThread(torch.nn.Module):
    """The net on one torch thread, as the detectors' per-core workers run it (the compiled Winograd
    tile transforms, and the first layers as Winograd convolutions too)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def _one_thread(self, fn, x):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert runs_compiled(x.float(), 4)
            return fn(x)
        finally:
            torch.set_num_threads(before)

    def forward(self, x):
        return self._one_thread(self.net, x)

    def detect(self, x):
        return self._one_thread(self.net.detect, x)


def _as_run(net: torch.nn.Module, how: str) -> torch.nn.Module:
    """``direct``: the net as loaded; ``winograd``: as FaceDetector runs it on CPU (channels-last, Winograd,
    sfd_face's rewrites); ``one thread``: that on one torch thread, as the per-core workers run it."""
    if how == "winograd":
        net = net.to(memory_format=torch.channels_last)
        assert use_winograd(net) == 9
    if how == "one thread":
        net = net.to(memory_format=torch.channels_last)
        assert use_winograd(net, min_compiled=MIN_COMPILED_CHANNELS) == 12
    if how != "direct" and isinstance(net, SFDFace):
        net.use_rewrites()
        net.strip_values = 1 << 16  # the first blocks in strips of a few rows, even on the golden 160x160
    return _OneThread(net) if how == "one thread" else net


@pytest.fixture(scope="module", params=["direct", "winograd", "one thread"])
def s3fd_net(request, s3fd_sd) -> S3FD:
    return _as_run(S3FD.from_state_dict(s3fd_sd), request.param)


@pytest.fixture(scope="module", params=["direct", "winograd", "one thread"])
def sfd_net(request, sfd_sd) -> SFDFace:
    return _as_run(SFDFace.from_state_dict(sfd_sd), request.param)


# --- networks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("net_cls", "manifest"), [(S3FD, "s3fd.json"), (SFDFace, "sfd_face.json")])
def test_state_dict_layout_is_the_checkpoints(net_cls, manifest):
    ours = [(k, tuple(v.shape)) for k, v in net_cls().state_dict().items()]
    assert sorted(ours) == sorted(manifest_entries(manifest))


def test_s3fd_heads_match_golden(s3fd_net, golden):
    g = golden("s3fd_heads")
    with torch.inference_mode():
        heads = s3fd_net(torch.from_numpy(g["net_input"]))
    assert len(heads) == 12
    for name, out in zip(HEAD_NAMES, heads, strict=True):
        np.testing.assert_allclose(out.numpy(), g[name], atol=2e-5, rtol=1e-4, err_msg=name)


def test_sfd_face_net_matches_golden(sfd_net, golden):
    g = golden("sfd_face_net")
    x = torch.from_numpy(g["net_input"])[None]
    with torch.inference_mode():
        out = sfd_net(x)
    np.testing.assert_allclose(out.loc.numpy(), g["loc"], atol=2e-5)
    np.testing.assert_allclose(out.conf.numpy(), g["conf_softmax"], atol=2e-5)
    np.testing.assert_allclose(pp.ssd_priors((160, 160), out.feature_hw), g["priors"], atol=1e-7)

    det = sfd_net.detect(x)
    ref = g["detections"]
    assert det.shape == ref.shape == (1, 2, pp.SSD_TOP_K, 5)
    assert not det[:, 0].any()  # background class stays empty, as in the reference
    strong = ref[0, 1, :, 0] > 0.5
    assert strong.sum() > 0 and (det[0, 1, :, 0] > 0.5).sum() == strong.sum()
    np.testing.assert_allclose(det[0, 1, strong, 0], ref[0, 1, strong, 0], atol=1e-5)
    np.testing.assert_allclose(det[0, 1, strong, 1:], ref[0, 1, strong, 1:], atol=1e-4)


def test_sfd_face_fast_path_equals_reference_chain(sfd_net, golden):
    """Decoding only boxes above conf_th gives what Detect(0.05) -> conf_th -> NMS 0.1 gives."""
    g = golden("sfd_face_net")
    x = torch.from_numpy(g["net_input"])[None]
    with torch.inference_mode():
        out = sfd_net(x)
    loc, conf = out.loc.numpy(), out.conf.numpy()
    priors = pp.ssd_priors((160, 160), out.feature_hw)
    full = pp.ssd_detect(loc, conf, priors)[0, 1]
    # random weights score below the real 0.9 threshold, so test the chain at thresholds that bite
    for conf_th, final_nms in [(0.5, 0.1), (0.55, 0.3), (0.3, 1.0)]:
        rows = full[full[:, 0] > conf_th]
        ref = np.concatenate([rows[:, 1:] * 160, rows[:, :1]], axis=1)
        ref = ref[pp.nms(ref.astype(np.float64), final_nms, plus_one=False)]
        fast = pp.sfd_face_detections(loc, conf, priors, (160, 160), conf_threshold=conf_th,
                                      final_nms_threshold=final_nms)[0]
        assert len(fast) == len(ref) > 0
        np.testing.assert_allclose(fast, ref, atol=1e-3)


# --- S3FD decoding (Wav2Lip) -------------------------------------------------------------------------


def _golden_heads(g: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [g[f"head_{name}"] for name in HEAD_NAMES]


def test_s3fd_candidates_match_golden(golden):
    g = golden("s3fd_postprocess")
    cand = pp.s3fd_candidates(_golden_heads(g))
    assert cand.shape == g["candidates"].shape
    np.testing.assert_allclose(cand[..., :4], g["candidates"][..., :4], atol=1e-3)
    np.testing.assert_allclose(cand[..., 4], g["candidates"][..., 4], atol=1e-6)


def test_s3fd_detections_match_golden(golden):
    g = golden("s3fd_postprocess")
    dets = pp.s3fd_detections(_golden_heads(g))
    assert len(dets) == 2
    for b, d in enumerate(dets):
        final = g[f"final_{b}"]
        assert d.dtype == np.float32 and d.shape == final.shape
        np.testing.assert_allclose(d[:, :4], final[:, :4], atol=1e-3)
        np.testing.assert_allclose(d[:, 4], final[:, 4], atol=1e-6)
        np.testing.assert_array_equal(wav2lip_rect(d), g["rects"][b])


def test_s3fd_fast_path_equals_nms_over_all_candidates():
    """Prefiltering at 0.5 before NMS changes nothing (random heads, batch of 3, many overlaps)."""
    rng = np.random.default_rng(7)
    sizes = [(30, 40), (15, 20), (8, 10), (8, 9), (4, 5), (2, 3)]
    heads = []
    for h, w in sizes:
        heads.append(rng.normal(0, 2.5, (3, 2, h, w)).astype(np.float32))
        heads.append(rng.normal(0, 1, (3, 4, h, w)).astype(np.float32))
    cand = pp.s3fd_candidates(heads)
    fast = pp.s3fd_detections(heads)
    for b in range(3):
        slow = cand[pp.nms(cand[:, b], 0.3, plus_one=True), b]
        slow = slow[slow[:, 4] > 0.5]
        assert len(slow) > 5
        np.testing.assert_array_equal(fast[b], slow)


def test_nms_planted():
    dets = np.array([
        [0, 0, 10, 10, 0.9],
        [1, 1, 11, 11, 0.8],  # IoU 0.68 with the first: suppressed
        [20, 20, 30, 30, 0.7],
        [0, 0, 10, 10, 0.95],  # duplicate of the first with a higher score: wins
        [25, 20, 35, 30, 0.6],  # IoU with the third: 50/150 plain, 66/176 with +1 widths
    ], dtype=np.float32)
    np.testing.assert_array_equal(pp.nms(dets, 0.3, plus_one=False), [3, 2])
    np.testing.assert_array_equal(pp.nms(dets, 0.35, plus_one=False), [3, 2, 4])
    np.testing.assert_array_equal(pp.nms(dets, 0.35, plus_one=True), [3, 2])
    np.testing.assert_array_equal(pp.nms(dets, 0.3, plus_one=False, top_k=2), [3])
    assert pp.nms(np.zeros((0, 5)), 0.3, plus_one=True).shape == (0,)


def test_wav2lip_rect_clips_and_truncates():
    assert wav2lip_rect(np.zeros((0, 5))) is None
    np.testing.assert_array_equal(wav2lip_rect(np.array([[-3.7, 2.9, 40.99, 50.2, 0.9], [0, 0, 1, 1, 0.8]])),
                                  [0, 2, 40, 50])


# --- detector ----------------------------------------------------------------------------------------


class FakeS3FD(torch.nn.Module):
    """Background everywhere except one confident anchor; records what the net was given."""

    def __init__(self, level: int, row: int, col: int) -> None:
        super().__init__()
        self.level, self.row, self.col = level, row, col
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        outs = []
        for k, stride in enumerate(pp.S3FD_STRIDES):
            h, w = max(1, x.shape[2] // stride), max(1, x.shape[3] // stride)
            cls = torch.zeros(len(x), 2, h, w)
            cls[:, 0] = 10.0
            if k == self.level:
                cls[:, :, self.row, self.col] = torch.tensor([-10.0, 10.0])
            outs += [cls, torch.zeros(len(x), 4, h, w)]
        return outs


class FakeSFD(torch.nn.Module):
    """SFDOutput with one confident prior on level 2 (stride 8)."""

    def __init__(self, row: int, col: int) -> None:
        super().__init__()
        self.row, self.col = row, col
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        hw = tuple((max(1, x.shape[2] // s), max(1, x.shape[3] // s)) for s in pp.S3FD_STRIDES)
        n_priors = sum(h * w for h, w in hw)
        conf = torch.zeros(len(x), n_priors, 2)
        conf[..., 0] = 1.0
        index = hw[0][0] * hw[0][1] + self.row * hw[1][1] + self.col
        conf[:, index] = torch.tensor([0.02, 0.98])
        return SFDOutput(loc=torch.zeros(len(x), n_priors, 4), conf=conf, feature_hw=hw)


def _detector(variant, sd, fake, **kwargs) -> FaceDetector:
    det = FaceDetector(sd, variant=variant, **kwargs)
    det.net = fake
    return det


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.37])
def test_s3fd_detector_maps_boxes_back(s3fd_sd, scale):
    # level 1 (stride 8), map position row 5, col 7: anchor centre (60, 44), side 32
    fake = FakeS3FD(level=1, row=5, col=7)
    frames = np.random.default_rng(0).integers(0, 256, (3, 241, 321, 3), dtype=np.uint8)
    out = _detector("s3fd", s3fd_sd, fake).detect(frames, scale=scale)
    net_h, net_w = fake.inputs[0].shape[2:]
    expected = np.array([44, 28, 76, 60]) * np.array([321 / net_w, 241 / net_h] * 2)
    assert len(out) == 3
    for d in out:
        assert d.dtype == np.float32 and d.shape == (1, 5)
        np.testing.assert_allclose(d[0, :4], expected, rtol=1e-5)
        assert d[0, 4] > 0.99


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_sfd_face_detector_maps_boxes_back(sfd_sd, scale):
    fake = FakeSFD(row=3, col=4)
    frames = np.random.default_rng(1).integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    out = _detector("sfd_face", sfd_sd, fake).detect(frames, scale=scale)
    net_h, net_w = fake.inputs[0].shape[2:]
    # stride-8 prior at row 3, col 4: centre (36, 28), side 32, in net pixels
    expected = np.array([20, 12, 52, 44]) * np.array([640 / net_w, 480 / net_h] * 2)
    for d in out:
        np.testing.assert_allclose(d[:, :4], expected[None], rtol=1e-5)
        np.testing.assert_allclose(d[:, 4], [0.98], rtol=1e-6)


def test_detector_preprocessing_matches_references(s3fd_sd, sfd_sd, golden):
    # Wav2Lip: the golden image is what the net is given after its BGR->RGB flip
    g = golden("s3fd_heads")
    fake = FakeS3FD(0, 0, 0)
    _detector("s3fd", s3fd_sd, fake).detect([np.ascontiguousarray(g["image_u8"][..., ::-1])])
    np.testing.assert_array_equal(fake.inputs[0].numpy(), g["net_input"])

    # syncnet_python: the golden image is the array handed to detect_faces, which run_pipeline.py
    # makes with cvtColor(BGR2RGB) from the decoded BGR frame; so the BGR frame is its flip
    g = golden("sfd_face_net")
    fake_sfd = FakeSFD(0, 0)
    _detector("sfd_face", sfd_sd, fake_sfd).detect([np.ascontiguousarray(g["image_bgr_u8"][..., ::-1])])
    np.testing.assert_array_equal(fake_sfd.inputs[0][0].numpy(), g["net_input"])


@pytest.mark.parametrize("across_cores", [False, True])
def test_s3fd_detector_runs_the_real_chain(s3fd_sd, s3fd_net, golden, across_cores):
    g = golden("s3fd_heads")
    frame = np.ascontiguousarray(g["image_u8"][..., ::-1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two batches of one: with across_cores, one on each of two workers
    try:
        out = FaceDetector(s3fd_sd, across_cores=across_cores).detect(np.stack([frame, frame[::-1].copy()]),
                                                                       batch_size=1)
    finally:
        torch.set_num_threads(before)
    with torch.inference_mode():
        x = torch.from_numpy(g["net_input"])
        heads = [h.numpy() for h in s3fd_net(torch.cat([x, x.flip(2)]))]
    ref = pp.s3fd_detections(heads)
    for d, r in zip(out, ref, strict=True):
        assert len(d) == len(r) > 0
        assert np.all(np.diff(d[:, 4]) <= 0)
        np.testing.assert_allclose(d, r, atol=1e-4)


def test_detector_halves_batch_on_out_of_memory(s3fd_sd):
    class Picky(FakeS3FD):
        def forward(self, x):
            if len(x) > 2:
                raise torch.OutOfMemoryError("planted")
            return super().forward(x)

    det = _detector("s3fd", s3fd_sd, Picky(1, 1, 1))
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    out = det.detect(frames, batch_size=8)  # the shared in_batches: 8 fails, 4 fails, then pairs
    assert len(out) == 8 and all(len(d) == 1 for d in out)
    assert det.batch_size == 2  # later calls start from the size that fitted
    assert [len(x) for x in det.net.inputs] == [2, 2, 2, 2]
    det.detect(frames[:3])  # two batches: on CPU they may run at once, so in either order
    assert sorted(len(x) for x in det.net.inputs[4:]) == [1, 2]


def test_detector_halves_batch_on_out_of_memory_on_all_cores(s3fd_sd):
    class Picky(FakeS3FD):
        def forward(self, x):
            if len(x) > 1:
                raise torch.OutOfMemoryError("planted")
            return super().forward(x)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        det = _detector("s3fd", s3fd_sd, Picky(1, 1, 1), across_cores=True)
        out = det.detect(np.zeros((4, 64, 64, 3), np.uint8), batch_size=2)  # two batches of 2 at once fail
    finally:
        torch.set_num_threads(before)
    assert len(out) == 4 and all(len(d) == 1 for d in out)
    assert det.batch_size == 1


def test_detector_winograd_option(s3fd_sd):
    def blocks(det: FaceDetector) -> list[tuple[int, bool]]:
        return [(m.block, m.compiled_only) for m in det.net.modules() if isinstance(m, WinogradConv2d)]

    assert blocks(FaceDetector(s3fd_sd)) == []  # direct convolutions unless asked, as load_detector
    # conv1_2, conv2_1 and conv2_2 only where the compiled tile transforms run, then the 9 wide layers
    assert blocks(FaceDetector(s3fd_sd, winograd=4)) == [(4, True)] * 3 + [(4, False)] * 9
    assert blocks(FaceDetector(s3fd_sd, winograd=2)) == [(2, False)] * 9


def test_detector_errors(s3fd_sd, sfd_sd):
    with pytest.raises(ValueError, match="use variant='sfd_face'"):
        FaceDetector(sfd_sd, variant="s3fd")
    bad = dict(s3fd_sd)
    bad["fc6.weight"] = torch.zeros(1024, 512, 1, 1)
    with pytest.raises(ValueError, match="fc6.weight"):
        FaceDetector(bad)
    det = FaceDetector(s3fd_sd)
    assert det.detect([]) == []
    with pytest.raises(ValueError, match="one size"):
        det.detect([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 40, 3), np.uint8)])


def test_detector_output_format_on_a_real_photo(weights_dir, face_image_bgr):
    """The file in the real layout loads; output format only (random weights find random 'faces')."""
    sd = torch.load(weights_dir / "s3fd.pth", map_location="cpu", weights_only=True)
    out = FaceDetector(sd).detect([face_image_bgr], scale=0.25)
    assert len(out) == 1 and out[0].dtype == np.float32 and out[0].shape[1:] == (5,)
    assert np.all(np.diff(out[0][:, 4]) <= 0) and np.all(out[0][:, 4] > pp.S3FD_KEEP_THRESHOLD)


# --- frames too small for the nets --------------------------------------------------------------------


def test_min_side_follows_the_pooling_arithmetic():
    assert MIN_SIDE == {"s3fd": 32, "sfd_face": 28}
    assert [pooled_side(n, "MMMMM") for n in (31, 32, 63, 64)] == [0, 1, 1, 2]
    assert [pooled_side(n, "MMCMM") for n in (27, 28, 31, 32)] == [0, 1, 1, 1]


@pytest.mark.parametrize(("net_cls", "variant"), [(S3FD, "s3fd"), (SFDFace, "sfd_face")])
def test_min_side_is_where_the_real_net_stops_running(net_cls, variant):
    """The derived minimum against the networks themselves: each side alone, at the minimum and one below."""
    net = net_cls().eval()
    least = MIN_SIDE[variant]
    with torch.inference_mode():
        for hw in ((least, least), (least, 3 * least), (3 * least, least)):
            net(torch.zeros(1, 3, *hw))
        for hw in ((least - 1, 3 * least), (3 * least, least - 1)):
            with pytest.raises(RuntimeError, match="too small"):
                net(torch.zeros(1, 3, *hw))


@pytest.mark.parametrize("variant", ["s3fd", "sfd_face"])
@pytest.mark.parametrize(("width", "height", "scale"), [(2, 2, 1.0), (16, 12, 1.0), (1920, 8, 1.0), (1, 1, 0.25),
                                                        (100, 100, 0.25), (1920, 27, 1.0), (640, 100, 0.25)])
def test_frames_below_the_minimum_have_no_detections(s3fd_sd, sfd_sd, variant, width, height, scale):
    det = FaceDetector(s3fd_sd if variant == "s3fd" else sfd_sd, variant=variant)
    out = det.detect(np.zeros((2, height, width, 3), np.uint8), scale=scale)
    assert [d.shape for d in out] == [(0, 5), (0, 5)]


@pytest.mark.parametrize(("variant", "width", "height", "scale"),
                         [("s3fd", 32, 32, 1.0), ("s3fd", 1920, 32, 1.0), ("sfd_face", 112, 112, 0.25),
                          ("sfd_face", 28, 400, 1.0)])
def test_frames_at_the_minimum_reach_the_net(s3fd_sd, sfd_sd, variant, width, height, scale):
    fake = FakeS3FD(0, 0, 0) if variant == "s3fd" else FakeSFD(0, 0)
    det = _detector(variant, s3fd_sd if variant == "s3fd" else sfd_sd, fake)
    det.detect(np.zeros((1, height, width, 3), np.uint8), scale=scale)
    assert min(fake.inputs[0].shape[2:]) == MIN_SIDE[variant]
