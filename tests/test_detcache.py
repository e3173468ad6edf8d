import numpy as np

from lipsync import detcache


def test_round_trip_keeps_faceless_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path))
    dets = {0: np.array([[1, 2, 3, 4, 0.9]], np.float32), 1: np.zeros((0, 5), np.float32),
            5: np.array([[5, 6, 7, 8, 0.8], [1, 1, 2, 2, 0.6]], np.float32)}
    detcache.save("key", dets)
    back = detcache.load("key")
    assert sorted(back) == [0, 1, 5] and len(back[1]) == 0
    np.testing.assert_array_equal(back[5], dets[5])
    assert [p.name for p in (tmp_path / "detections").iterdir()] == ["key.npz"]
    assert detcache.load("other") is None


def test_key_depends_on_content_and_settings(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert detcache.content_key(a, {"x": 1}) != detcache.content_key(b, {"x": 1})
    assert detcache.content_key(a, {"x": 1}) != detcache.content_key(a, {"x": 2})
    assert detcache.content_key(a, {"x": 1}) == detcache.content_key(a, {"x": 1})


def test_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(blocker))
    detcache.save("key", {0: np.zeros((0, 5), np.float32)})
    assert "could not cache" in caplog.text
