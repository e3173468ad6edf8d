import numpy as np

from common.hashing import content_key, file_sha256
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
    assert content_key(a, {"x": 1}) != content_key(b, {"x": 1})
    assert content_key(a, {"x": 1}) != content_key(a, {"x": 2})
    assert content_key(a, {"x": 1}) == content_key(a, {"x": 1})
    # the SHA-256 of the bytes: known for b"one"; a copy has the same, a changed file another
    assert file_sha256(a) == "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
    copy = tmp_path / "copy of a.mp4"
    copy.write_bytes(a.read_bytes())
    assert content_key(copy, {"x": 1}) == content_key(a, {"x": 1})
    a.write_bytes(b"one, edited")
    assert file_sha256(a) != file_sha256(copy)


def test_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(blocker))
    detcache.save("key", {0: np.zeros((0, 5), np.float32)})
    assert "could not cache" in caplog.text
