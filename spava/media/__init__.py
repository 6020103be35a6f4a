"""spava.media: turning video sources into sampled RGB frames for Qwen2.5-VL.

Submodules (import them directly; this package imports nothing heavy):

- ``spava.media.sampling``  -- :class:`FrameSampling` (what to sample) and
  :func:`plan_frame_sampling` (which source frames, at which times). Pure Python.
- ``spava.media.video``     -- :func:`decode_video` / :func:`probe_video`: decode the
  planned frames from a path, raw bytes or in-memory frames (PyAV by default;
  decord / torchcodec when installed), and read metadata without decoding.
- ``spava.media.synthetic`` -- small synthetic videos whose frames carry their own
  index, for tests and demos.

Importing ``spava.media`` does not import PyAV, decord, torchcodec or torch.
"""
