"""spava.media: turning video sources into sampled RGB frames for Qwen2.5-VL.

Submodules (import them directly; this package imports nothing heavy):

- ``spava.media.sampling``  -- :class:`FrameSampling` (what to sample) and
  :func:`plan_frame_sampling` (which source frames, at which times). Pure Python.
- ``spava.media.video``     -- :func:`probe_video` (metadata, packet index, rotation),
  :func:`plan_video_sampling`, :func:`decode_video_into` (parallel decode of a plan into
  a caller's array, with progress and cancellation) and :func:`decode_video` (all three),
  from a path, raw bytes or in-memory frames (PyAV by default; decord / torchcodec when
  installed). The PyAV internals live in ``pyav_probe``, ``parallel_decode``,
  ``decode_segments`` and ``pyav_decoder``; ``progress`` has :class:`DecodeProgress`.
- ``spava.media.synthetic`` -- small synthetic videos whose frames carry their own
  index, for tests and demos.

Importing ``spava.media`` does not import PyAV, decord, torchcodec or torch.
"""
