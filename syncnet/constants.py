"""The facts SyncNet was trained with, shared by its features, model, crops and scores (no imports)."""

VIDEO_FPS = 25  # frames per second of the lip stream
AUDIO_RATE = 16000  # Hz, 16-bit mono, as syncnet_python extracts it with ffmpeg
SAMPLES_PER_FRAME = AUDIO_RATE // VIDEO_FPS  # 640
MFCC_RATE = 100  # MFCC frames per second (10 ms hop)
MFCC_PER_FRAME = MFCC_RATE // VIDEO_FPS  # 4
WINDOW_FRAMES = 5  # one window: 5 video frames = 0.2 s
WINDOW_MFCC = WINDOW_FRAMES * MFCC_PER_FRAME  # 20 MFCC columns = 0.2 s
CROP_SIZE = 224  # side of the face crops the lip tower sees
