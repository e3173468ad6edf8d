"""Options declared once (common.optspec): the CLI flags, the API parameters and the UI controls come
from the dataclasses' fields and agree with them; values convert and validate in one place."""

from __future__ import annotations

import dataclasses

import pytest

from common import optspec
from common.errors import InputError
from lipsync.__main__ import build_parser as lipsync_parser
from lipsync.options import LipSyncOptions
from syncnet.__main__ import build_parser as syncnet_parser
from syncnet.options import EvalOptions

# flags that are not options: inputs, where the weights are, the device, output and verbosity
ENGINE_FLAGS = {"help", "face", "audio", "voice", "outfile", "weights_dir", "device", "quiet", "videos", "json",
                "syncnet", "detector"}


def defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("parser, cls", [(lipsync_parser, LipSyncOptions), (syncnet_parser, EvalOptions)])
def test_cli_flags_are_the_fields_with_their_defaults(parser, cls):
    actions = {a.dest: a for a in parser()._actions if a.dest not in ENGINE_FLAGS}
    assert set(actions) == set(defaults(cls))
    for name, default in defaults(cls).items():
        assert actions[name].default == default, name
    required = ["face.mp4", "speech.wav"] if cls is LipSyncOptions else ["video.mp4"]
    assert optspec.from_namespace(cls, parser().parse_args(required)) == cls()


def test_documented_cli_spellings_still_parse():
    args = lipsync_parser().parse_args([
        "f.mp4", "a.wav", "--checkpoint_path", "wav2lip", "--face_det_batch_size", "4", "--wav2lip-batch-size", "8",
        "--resize_factor", "2", "--pads", "1", "2", "3", "4", "--box", "10", "90", "20", "80", "--no-cache",
        "--face-point", "5", "6", "--detect-every", "3", "--nosmooth", "--loop", "pingpong"])
    options = optspec.from_namespace(LipSyncOptions, args)
    assert options == LipSyncOptions(checkpoint="wav2lip", face_det_batch_size=4, wav2lip_batch_size=8,
                                     resize_factor=2, pads=(1, 2, 3, 4), box=(10, 90, 20, 80), cache_detections=False,
                                     face_point=(5.0, 6.0), detect_every=3, nosmooth=True, loop="pingpong")
    scoring = optspec.from_namespace(EvalOptions, syncnet_parser().parse_args(
        ["v.mp4", "--no-jpeg-roundtrip", "--min-track", "25", "--mode", "whole-frame", "--detect-every", "5"]))
    assert scoring == EvalOptions(jpeg_roundtrip=False, min_track=25, mode="whole-frame", detect_every=5)


def test_cli_takes_a_checkpoint_file_but_the_api_does_not():
    args = lipsync_parser().parse_args(["f.mp4", "a.wav", "--checkpoint", "/some/where/my.pth"])
    assert optspec.from_namespace(LipSyncOptions, args).checkpoint == "/some/where/my.pth"
    params = optspec.parameters(LipSyncOptions)
    with pytest.raises(InputError, match="checkpoint must be one of wav2lip_gan, wav2lip"):
        optspec.from_parameters(LipSyncOptions, {"checkpoint": "/etc/passwd"}, params)


def test_parameters_flatten_tuples_and_round_trip():
    params = optspec.parameters(LipSyncOptions)
    names = [p.name for p in params]
    assert names[:5] == ["checkpoint", "pad_top", "pad_bottom", "pad_left", "pad_right"]
    assert {"crop_top", "box", "face_point", "cache_detections"} <= set(names)
    assert optspec.from_parameters(LipSyncOptions, {}, params) == LipSyncOptions()
    # what a UI sends: numbers as floats, boxes as text
    options = optspec.from_parameters(LipSyncOptions, {"pad_bottom": 20.0, "box": "30, 170 65 190", "face_point": "",
                                                       "face_index": 1.0, "fps": 29.97}, params)
    assert options.pads == (0, 20, 0, 0) and options.box == (30, 170, 65, 190) and options.face_point is None
    assert options.face_index == 1 and options.fps == 29.97
    by_name = {p.name: p for p in params}
    assert by_name["box"].kind == "numbers" and by_name["box"].placeholder == "top bottom left right"
    assert by_name["pad_top"].label == "Pad top" and by_name["pad_top"].default == 0
    assert by_name["loop"].choices == ("forward", "pingpong")


def test_prefixed_parameters():
    params = optspec.parameters(EvalOptions, prefix="score_", unprefixed=("min_track",))
    names = [p.name for p in params]
    assert names[:3] == ["score_mode", "min_track", "score_detect_every"]
    options = optspec.from_parameters(EvalOptions, {"score_mode": "whole-frame", "min_track": 30}, params)
    assert options == EvalOptions(mode="whole-frame", min_track=30)


@pytest.mark.parametrize("values, message", [
    ({"face_index": 1.5}, "face_index must be a whole number"),
    ({"resize_factor": 0}, "resize_factor must be at least 1"),
    ({"wav2lip_batch_size": 10**6}, "wav2lip_batch_size must be at most 1024"),
    ({"box": "1 2 3"}, r"box \(top bottom left right\) needs 4 numbers"),
    ({"box": "30 10 0 5"}, "box .* is empty"),
    ({"loop": "backwards"}, "loop must be one of forward, pingpong"),
    ({"strict": "yes"}, "strict must be true or false"),
    ({"fps": "fast"}, "fps must be a number"),
    ({"fps": float("nan")}, "fps must be a finite number"),
])
def test_bad_values_say_which_parameter(values, message):
    with pytest.raises(InputError, match=message):
        optspec.from_parameters(LipSyncOptions, values, optspec.parameters(LipSyncOptions))


def test_bounds_hold_for_python_callers_too():
    with pytest.raises(InputError, match="detect_every must be at most 25"):
        EvalOptions(detect_every=30)
    with pytest.raises(InputError, match="pads needs 4 numbers"):
        LipSyncOptions(pads=(1, 2))
    assert LipSyncOptions(pads=[1, 2, 3, 4]).pads == (1, 2, 3, 4)


def test_parse_numbers():
    assert optspec.parse_numbers("", 4, "box") is None
    assert optspec.parse_numbers(None, 4, "box") is None
    assert optspec.parse_numbers(" 1, 2 3  4", 4, "box") == (1, 2, 3, 4)
    assert optspec.parse_numbers([1, 2], 2, "point") == (1.0, 2.0)
    with pytest.raises(InputError, match="box needs 4 numbers"):
        optspec.parse_numbers("1 2 3", 4, "box")
    with pytest.raises(InputError):
        optspec.parse_numbers("a b", 2, "point")


def test_every_field_is_declared_with_help_and_label():
    for cls in (LipSyncOptions, EvalOptions):
        for param in optspec.parameters(cls):
            assert param.spec.help.endswith(".") and param.label, param.name


def test_an_undeclared_field_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Sloppy:
        x: int = 1

    with pytest.raises(TypeError, match="Sloppy.x is not declared with option"):
        optspec.parameters(Sloppy)
