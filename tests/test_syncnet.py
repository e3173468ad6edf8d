"""SyncNet evaluator, pure parts: model vs golden embeddings, MFCC, windows and scores, shots, crops, JPEG."""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.errors import InputError, WeightsError
from syncnet import crops, scenes, score
from syncnet.embed import LipWindows
from syncnet.evaluate import EvalOptions, to_int16
from syncnet.folded import FoldedSyncNet, fold_tower
from syncnet.mfcc import frame_count, mfcc
from syncnet.model import SyncNet, load_syncnet

DATA = Path(__file__).parent / "data"


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest deviation relative to the largest magnitude (the golden README's tolerance)."""
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def syncnet_model(weights_dir: Path) -> SyncNet:
    return load_syncnet(weights_dir=weights_dir)


# -- model -------------------------------------------------------------------------------------------

def test_state_dict_matches_real_checkpoint_layout():
    manifest = json.loads((DATA / "manifests" / "syncnet_v2.json").read_text())
    expected = [(k, tuple(s)) for k, s, _ in manifest["state_dict"]]
    ours = [(k, tuple(v.shape)) for k, v in SyncNet().state_dict().items()]
    assert sorted(ours) == sorted(expected)
    assert sum(p.numel() for p in SyncNet().parameters()) == manifest["num_parameters"]


def test_embeddings_match_golden(syncnet_model: SyncNet, golden):
    g = golden("syncnet_embeddings")
    with torch.inference_mode():
        lip = syncnet_model.forward_lip(torch.from_numpy(g["lip_input_u8"].astype(np.float32))).numpy()
        aud = syncnet_model.forward_aud(torch.from_numpy(g["audio_input"])).numpy()
    assert lip.shape == aud.shape == (2, 1024)
    assert rel_err(lip, g["lip_embedding"]) < 1e-4
    assert rel_err(aud, g["audio_embedding"]) < 1e-4


def test_folded_model_matches_golden(syncnet_model: SyncNet, golden):
    """The evaluator's folded, 2-D net gives the golden embeddings too, and the model's own to ~1e-5."""
    g = golden("syncnet_embeddings")
    folded = FoldedSyncNet(syncnet_model)
    lip_in, aud_in = torch.from_numpy(g["lip_input_u8"].astype(np.float32)), torch.from_numpy(g["audio_input"])
    with torch.inference_mode():
        lip, aud = folded.forward_lip(lip_in).numpy(), folded.forward_aud(aud_in).numpy()
        assert rel_err(lip, syncnet_model.forward_lip(lip_in).numpy()) < 1e-5
        assert rel_err(aud, syncnet_model.forward_aud(aud_in).numpy()) < 1e-5
    assert rel_err(lip, g["lip_embedding"]) < 1e-4
    assert rel_err(aud, g["audio_embedding"]) < 1e-4
    # folding copies: the model itself is unchanged
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in syncnet_model.netcnnlip)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm | torch.nn.Conv3d)
                   for m in [*folded.lip_cnn, *folded.aud_cnn])


@pytest.mark.parametrize(("n", "extra"), [(1, 0), (3, 0), (5, 2)])
def test_lip_windows_values_and_layout(n: int, extra: int):
    frames = np.random.default_rng(n).integers(0, 256, (n + 4 + extra, 8, 6, 3), np.uint8)
    windows = score.lip_windows(frames, n)
    expected = torch.stack([torch.from_numpy(frames[i:i + 5]).permute(3, 0, 1, 2) for i in range(n)]).float()
    torch.testing.assert_close(windows, expected, rtol=0, atol=0)
    # (B, H, W, time, channel) in memory: FoldedSyncNet reshapes it to 2-D input without a copy
    assert windows.permute(0, 3, 4, 2, 1).is_contiguous()
    with pytest.raises(ValueError, match="need 9 frames for 5 windows"):
        score.lip_windows(frames[:8], 5)


def test_fold_tower_refuses_what_it_cannot_convert():
    with pytest.raises(ValueError, match="does not reduce 5 time steps"):
        fold_tower(torch.nn.Sequential(torch.nn.Conv3d(3, 4, (3, 3, 3))), 5)
    with pytest.raises(ValueError, match="must follow a convolution"):
        fold_tower(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    with pytest.raises(ValueError, match="cannot fold"):
        fold_tower(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Sigmoid()))
    with pytest.raises(ValueError, match="cannot fold MaxPool3d"):
        fold_tower(torch.nn.Sequential(torch.nn.MaxPool3d((1, 2, 2))), 5)


def test_checkpoint_without_num_batches_tracked_loads(weights_dir: Path, tmp_path: Path, golden):
    sd = torch.load(weights_dir / "syncnet_v2.model", weights_only=True)
    trimmed = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(sd) - len(trimmed) == 14
    torch.save(trimmed, tmp_path / "trimmed.model")
    model = load_syncnet(tmp_path / "trimmed.model")
    g = golden("syncnet_embeddings")
    with torch.inference_mode():
        aud = model.forward_aud(torch.from_numpy(g["audio_input"])).numpy()
    assert rel_err(aud, g["audio_embedding"]) < 1e-4


def test_wrong_checkpoint_is_a_weights_error(weights_dir: Path):
    with pytest.raises(WeightsError, match="SyncNet"):
        load_syncnet(weights_dir / "sfd_face.pth")


# -- MFCC --------------------------------------------------------------------------------------------

def test_mfcc_matches_golden(golden):
    g = golden("syncnet_evaluate")
    ours = mfcc(g["audio_int16"], 16000)
    assert ours.shape == (159, 13) and ours.dtype == np.float64
    np.testing.assert_allclose(ours.T, g["mfcc"], rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("n", [1, 399, 400, 401, 560, 561, 16000, 12345, 176000])
def test_mfcc_matches_python_speech_features(n: int):
    psf = pytest.importorskip("python_speech_features")
    signal = (np.random.default_rng(n).standard_normal(n) * 3000).astype(np.int16)
    expected = psf.mfcc(signal, 16000)
    assert frame_count(n) == len(expected)
    np.testing.assert_allclose(mfcc(signal), expected, rtol=1e-10, atol=1e-9)


def test_mfcc_of_silence_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    silence = np.zeros(3200, np.int16)
    np.testing.assert_array_equal(mfcc(silence), psf.mfcc(silence, 16000))


def test_mfcc_rejects_other_rates():
    with pytest.raises(ValueError, match="16000"):
        mfcc(np.ones(1000, np.int16), 22050)


# -- windows and scores ------------------------------------------------------------------------------

def test_window_count_is_one_fewer_than_fits():
    # golden: 40 frames, 25600 samples -> min_length 40, lastframe 35
    assert score.usable_frames(40, 25600) == 40
    assert score.window_count(40, 25600) == 35
    assert score.window_count(40, 640 * 30) == 25  # audio-limited
    assert score.window_count(5, 10**6) == 0
    assert score.window_count(6, 10**6) == 1


def test_evaluate_arithmetic_matches_golden(syncnet_model: SyncNet, golden):
    g = golden("syncnet_evaluate")
    frames = np.repeat(np.repeat(g["frames_small_u8"], 8, axis=1), 8, axis=2)
    n = score.window_count(len(frames), len(g["audio_int16"]))
    assert n == 35
    mfcc_t = mfcc(g["audio_int16"]).T
    with torch.inference_mode():
        aud = syncnet_model.forward_aud(torch.from_numpy(score.audio_windows(mfcc_t, 0, n))).numpy()
        # three lip windows are enough to pin the window construction (and keep the test fast)
        picks = [0, 17, 34]
        lip = torch.cat([syncnet_model.forward_lip(score.lip_windows(frames[v:], 1)) for v in picks]).numpy()
    assert rel_err(aud, g["aud_feat"]) < 1e-4
    assert rel_err(lip, g["lip_feat"][picks]) < 1e-4

    result = score.score_features(g["lip_feat"], g["aud_feat"])
    np.testing.assert_allclose(score.offset_distances(g["lip_feat"], g["aud_feat"]), g["dists"], rtol=1e-5)
    np.testing.assert_allclose(result.mdist, g["mdist"], rtol=1e-5)
    assert result.offset == int(g["offset"]) == 15
    assert result.min_dist == pytest.approx(float(g["min_dist"]), rel=1e-5)
    assert result.conf == pytest.approx(float(g["conf"]), abs=1e-2)
    for key in ("fdist", "fconf", "fconfm"):
        np.testing.assert_allclose(getattr(result, key), g[key], rtol=1e-5, atol=1e-2)


def test_planted_offset_golden(golden):
    g = golden("syncnet_pdist_synthetic")
    result = score.score_features(g["lip_feat"], g["aud_feat"])
    assert result.offset == int(g["offset"]) == 3
    assert int(np.argmin(result.mdist)) == int(g["minidx"])
    assert result.min_dist == pytest.approx(float(g["min_dist"]), rel=1e-5)
    assert result.conf == pytest.approx(float(g["conf"]), abs=1e-2)


@pytest.mark.parametrize("shift", [-7, -1, 0, 2, 11])
def test_planted_offset_sign(shift: int):
    """aud[j] = lip[j + shift] (the audio leads by ``shift`` frames) gives offset == shift."""
    rng = np.random.default_rng(abs(shift))
    n = 80
    lip = rng.standard_normal((n + 40, 64)).astype(np.float32)
    aud = lip[20 + shift:20 + shift + n] + 0.01 * rng.standard_normal((n, 64)).astype(np.float32)
    result = score.score_features(lip[20:20 + n], aud)
    assert result.offset == shift
    assert result.conf > 1.0
    assert result.fconfm.shape == (n,)


def test_distances_are_blockwise_consistent():
    rng = np.random.default_rng(0)
    lip = rng.standard_normal((600, 8)).astype(np.float32)  # more than one block of 256
    aud = rng.standard_normal((600, 8)).astype(np.float32)
    d = score.offset_distances(lip, aud, vshift=3)
    audpad = np.pad(aud, ((3, 3), (0, 0)))
    naive = np.stack([np.linalg.norm(lip[i] - audpad[i:i + 7] + 1e-6, axis=1) for i in range(600)])
    np.testing.assert_allclose(d, naive, rtol=1e-5)


def test_short_sequence_confidence_is_zero_padded():
    result = score.score_features(np.ones((3, 4), np.float32), np.ones((3, 4), np.float32))
    assert result.fconfm.shape == (3,)


class _MeanLip:
    """Stands in for SyncNet: the embedding of a window is its five frames' mean values."""

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 3, 4))


@pytest.mark.parametrize(("n_frames", "limit", "batch"), [(30, 100, 4), (30, 100, 50), (30, 12, 5), (6, 100, 3)])
def test_streamed_windows_match_the_reference_windows(n_frames: int, limit: int, batch: int):
    frames = np.arange(n_frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    stream = LipWindows(_MeanLip(), torch.device("cpu"), batch, limit)
    for f in frames:
        stream.push(f)
    feats = stream.finish().numpy()
    expected_n = min(n_frames - 5, limit)  # windows 0 .. min_length-6
    assert feats.shape == (expected_n, 5)
    np.testing.assert_array_equal(feats, np.arange(expected_n)[:, None] + np.arange(5)[None, :])
    assert len(stream.buffer) <= batch + 5


def test_int16_conversion_rounds_like_ffmpeg():
    x = np.array([0.0, 0.5 / 32768, 1.5 / 32768, -1.0, 1.0, 2.0, 0.25], np.float32)
    np.testing.assert_array_equal(to_int16(x), [0, 0, 2, -32768, 32767, 32767, 8192])


# -- options -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"mode": "faces"}, {"min_track": 2}, {"detect_every": 0},
                                    {"detect_every": 30}, {"facedet_scale": 0}, {"batch_size": 0}])
def test_bad_options_are_input_errors(kwargs):
    with pytest.raises(InputError):
        EvalOptions(**kwargs)


# -- shots -------------------------------------------------------------------------------------------

def test_downscale_factor_follows_pyscenedetect():
    assert [scenes.downscale_factor(w) for w in (320, 400, 640, 1280, 1920, 3840)] == [1, 2, 3, 5, 6, 12]


def test_content_score_is_mean_hsv_difference():
    grey = np.full((8, 8, 3), 100, np.uint8)
    brighter = np.full((8, 8, 3), 190, np.uint8)
    # grey: H = S = 0, only V changes by 90 -> (0 + 0 + 90) / 3
    hsv = [scenes.small_hsv(f, 1) for f in (grey, brighter)]
    assert scenes.content_score(*hsv) == pytest.approx(30.0)


def test_cuts_respect_threshold_and_min_scene_length():
    scores = np.zeros(100)
    scores[[5, 40, 45, 60, 61]] = [50, 30, 80, 29.9, 31]
    # 5 is within 15 frames of the start, 45 within 15 of the cut at 40, 60 is below 30
    assert scenes.find_cuts(scores) == [40, 61]
    assert scenes.detect_shots(scores) == [(0, 40), (40, 61), (61, 100)]
    assert scenes.detect_shots(np.zeros(10)) == [(0, 10)]


def test_streaming_scorer_finds_a_hard_cut():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frames = [a] * 20 + [b] * 20
    scorer = scenes.ContentScorer(64)
    shots = scenes.detect_shots([scorer(f) for f in frames])
    assert shots == [(0, 20), (20, 40)]


# -- crops -------------------------------------------------------------------------------------------

def reference_crop(frame: np.ndarray, s: float, x: float, y: float, cs: float = 0.4) -> np.ndarray:
    """run_pipeline.py's crop, written out naively: pad the whole frame, slice, resize."""
    bsi = int(s * (1 + 2 * cs))
    padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
    my, mx = y + bsi, x + bsi
    face = padded[int(my - s):int(my + s * (1 + 2 * cs)), int(mx - s * (1 + cs)):int(mx + s * (1 + cs))]
    return cv2.resize(face, (224, 224))


@pytest.mark.parametrize(("s", "x", "y"), [(60.0, 160.0, 120.0), (55.5, 10.2, 5.7), (80.0, 300.4, 230.9),
                                           (120.0, 160.0, 120.0), (30.3, 0.0, 239.0)])
def test_crop_equals_pad_and_slice(s: float, x: float, y: float):
    frame = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crops.crop_face(frame, s, x, y), reference_crop(frame, s, x, y))


def test_smooth_track_is_median_of_size_and_centre():
    boxes = np.tile([100.0, 50.0, 200.0, 170.0], (30, 1))
    boxes[10] = [0, 0, 400, 400]  # one outlier is removed by the 13-frame median
    smooth = crops.smooth_track(boxes)
    np.testing.assert_allclose(smooth[6:24], np.tile([60.0, 150.0, 110.0], (18, 1)))
    # the ends are zero-padded as scipy.signal.medfilt does: frame 0 sees 6 zeros in its window
    assert smooth[0, 0] == 60.0 and smooth[0, 1] == 150.0


# -- JPEG round trip ---------------------------------------------------------------------------------

def _quant_tables(jpeg: bytes) -> list[bytes]:
    """The DQT segments of a baseline JPEG file (markers before the scan)."""
    tables, i = [], 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF and jpeg[i + 1] != 0xDA:
        length = int.from_bytes(jpeg[i + 2:i + 4], "big")
        if jpeg[i + 1] == 0xDB:
            tables.append(jpeg[i + 4:i + 2 + length])
        i += 2 + length
    return tables


def _moving_frames(face_bgr: np.ndarray, n: int = 30) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        y, x = 50 + int(10 * np.sin(i / 5)), 100 + int(15 * np.cos(i / 7))
        frames.append(np.ascontiguousarray(cv2.resize(face_bgr[y:y + 300, x:x + 300], (224, 224))))
    return frames


def test_jpeg_round_trip_is_lossy_and_stateful(face_image_bgr: np.ndarray):
    frames = _moving_frames(face_image_bgr, 25)
    rt = crops.JpegRoundTrip()
    out = [rt(f) for f in frames]
    assert all(o.shape == f.shape and o.dtype == np.uint8 for o, f in zip(out, frames, strict=True))
    errors = [np.abs(o.astype(int) - f).mean() for o, f in zip(out, frames, strict=True)]
    # 200 kb/s at 25 fps: the rate control raises the quantiser over the first frames
    assert 0 < errors[0] < errors[-1]
    fresh = crops.JpegRoundTrip()(frames[-1])
    assert np.abs(fresh.astype(int) - frames[-1]).mean() < errors[-1]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command line tool")
def test_jpeg_round_trip_matches_ffmpeg_image2(tmp_path: Path, face_image_bgr: np.ndarray):
    """``ffmpeg -i crop.mkv -threads 1 -f image2 %06d.jpg`` read back by OpenCV, as the reference does."""
    import av

    frames = _moving_frames(face_image_bgr, 30)
    src = tmp_path / "crop.mkv"
    with av.open(str(src), "w") as container:  # lossless yuv420p, what a decoder hands ffmpeg
        stream = container.add_stream("ffv1", rate=25)
        stream.width = stream.height = 224
        stream.pix_fmt = "yuv420p"
        decoded = []
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="bgr24").reformat(format="yuv420p")
            decoded.append(frame.to_ndarray(format="bgr24"))  # what our decoder gives for that frame
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-threads", "1",
                    "-f", "image2", str(tmp_path / "%06d.jpg")], check=True)
    files = sorted(tmp_path.glob("*.jpg"))
    assert len(files) == len(frames)
    ref = [cv2.imread(str(p)) for p in files]
    rt = crops.JpegRoundTrip()
    jpegs = [rt.encode(f) for f in decoded]
    # the rate control picks the same quantiser for every frame: identical quantisation tables
    # (they coarsen from frame to frame, ~8 -> ~60 for the AC terms)
    tables = [_quant_tables(j) for j in jpegs]
    assert tables == [_quant_tables(p.read_bytes()) for p in files]
    assert tables[-1] != tables[0]
    ours = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    for i, (o, r, d) in enumerate(zip(ours, ref, decoded, strict=True)):
        diff = np.abs(o.astype(int) - r).mean()
        # same encoder, settings and quantiser ladder; only the colour conversion of the input differs
        # (ours starts from BGR, ffmpeg from YUV), which moves pixels by ~2 levels on average
        assert diff < 3.0, (i, diff)
        assert diff < np.abs(d.astype(int) - r).mean() or i < 3, (i, diff)


def test_full_range_levels_stretch_limited_range():
    assert crops._FULL_LUMA[[0, 16, 126, 235, 255]].tolist() == [0, 0, 128, 255, 255]
    # chroma 16 lands on 0.5 exactly and rounds to even, as swscale does
    assert crops._FULL_CHROMA[[0, 16, 17, 128, 240, 255]].tolist() == [0, 0, 2, 128, 255, 255]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command line tool")
def test_full_range_planes_are_ffmpegs_for_every_level(tmp_path: Path):
    """yuv420p -> yuvj420p as the ffmpeg command line converts it, over all 256 levels of each plane."""
    import av

    width, height = 64, 32
    levels = np.arange(width * height) % 256
    raw = np.concatenate([levels, levels[: width * height // 4], (7 * levels[: width * height // 4]) % 256])
    (tmp_path / "in.yuv").write_bytes(raw.astype(np.uint8).tobytes())
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p",
                    "-s", f"{width}x{height}", "-i", str(tmp_path / "in.yuv"), "-pix_fmt", "yuvj420p", "-f",
                    "rawvideo", str(tmp_path / "out.yuv")], check=True)
    frame = av.VideoFrame.from_ndarray(raw.astype(np.uint8).reshape(-1, width), format="yuv420p")
    ours = np.concatenate([p.ravel() for p in crops.full_range_planes(frame)])
    assert np.array_equal(ours, np.fromfile(tmp_path / "out.yuv", np.uint8))
    assert crops.full_range_planes(frame.reformat(format="yuv444p")) is None  # other layouts: the BGR path


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command line tool")
@pytest.mark.parametrize("rotate", [0, 90])
def test_decoded_frames_give_ffmpegs_jpegs_pixel_for_pixel(tmp_path: Path, face_image_bgr: np.ndarray, rotate: int):
    """``ffmpeg -i video.mp4 -threads 1 -f image2 %06d.jpg`` + cv2.imread, as the LRS2 script reads a video."""
    from media.io import VideoWriter, iter_video_frames

    video = tmp_path / "face.mp4"
    with VideoWriter(video, 224, 224, 25) as writer:
        for frame in _moving_frames(face_image_bgr, 20):
            writer.write(frame)
    if rotate:
        turned = tmp_path / "turned.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(video), "-c", "copy",
                        "-metadata:s:v", f"rotate={rotate}", str(turned)], check=True)
        video = turned
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(video), "-threads", "1",
                    "-f", "image2", str(tmp_path / "%06d.jpg")], check=True)
    reference = [cv2.imread(str(p)) for p in sorted(tmp_path.glob("*.jpg"))]
    rt = crops.JpegRoundTrip()
    ours = [rt.decoded(frame, orientation) for frame, orientation in iter_video_frames(video, fps=25)]
    assert len(ours) == len(reference) == 20
    for i, (o, r) in enumerate(zip(ours, reference, strict=True)):
        assert np.array_equal(o, r), (i, np.abs(o.astype(int) - r).mean())
