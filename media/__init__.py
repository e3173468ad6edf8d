"""Media I/O through PyAV, in-process: probing, decoding video frames and audio, encoding the output
(``io``), the codec settings (``codecs``) and the streamed pieces of an output (``segments``). Above
``common`` only."""
