"""Per-frame pixel cap from a total pixel budget, as qwen-vl-utils computes it for videos.

Role
----
Pure arithmetic (no numpy, no torch), re-exported by :mod:`spava.media.sampling` as part
of the sampling contract (its rule 6): :func:`effective_max_pixels` tells the image
processor the largest frame area a plan of ``T`` frames may use.
"""

from __future__ import annotations


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# qwen-vl-utils' fixed per-frame ceiling (its VIDEO_MAX_PIXELS) and the floor's margin over min_pixels.
_REFERENCE_VIDEO_MAX_PIXELS = 768 * 28 * 28
_REFERENCE_MIN_PIXELS_MARGIN = 1.05


def effective_max_pixels(
    num_frames: int, min_pixels: int, max_pixels: int, total_pixels: int | None, factor: int = 2
) -> float:
    """Per-frame pixel cap that qwen-vl-utils applies to a video of ``num_frames`` sampled frames.

    The reference (``fetch_video`` in ``qwen-vl-utils/src/qwen_vl_utils/vision_process.py`` of
    the Qwen2.5-VL repository) spreads a total budget over the temporal patches::

        cap = max(min(VIDEO_MAX_PIXELS, total_pixels / num_frames * FRAME_FACTOR), int(min_pixels * 1.05))
        cap = min(requested max_pixels, cap)        # a larger request is clamped (with a warning)

    with ``VIDEO_MAX_PIXELS = 768 * 28 * 28``, ``FRAME_FACTOR = 2`` and ``total_pixels``
    defaulting to ``VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9) = 90316800`` (read from
    the environment variable that, confusingly, is called ``VIDEO_MAX_PIXELS`` there). So 64
    frames keep the full 768 * 28 * 28 per frame, while 768 frames get ``90316800 / 768 * 2 =
    235200`` (300 patches of 28x28). The older Qwen2-VL copy of that file used a budget of
    ``24576 * 28 * 28`` and no clamp of a larger request.

    Where spava differs on purpose: ``total_pixels=None`` turns the budget off together with
    the fixed 768 * 28 * 28 ceiling, and the cap is ``max_pixels`` as given. That is how a
    run asks for native resolution (the paper benchmarks 64 uniformly sampled frames at
    native resolution, setting ``max_pixels`` and the budget explicitly), which the
    reference cannot express without editing its constants. :class:`FrameSampling`'s
    defaults (``min_pixels``, ``max_pixels``, ``total_pixels``) are the reference's.

    Args:
        num_frames: Sampled frames T >= 1 (the plan's count, repeats included).
        min_pixels: Smallest frame area the resize may give.
        max_pixels: Requested largest frame area.
        total_pixels: Budget for all frames together, or None for none.
        factor: Frames per temporal patch (``FRAME_FACTOR``, Qwen2.5-VL's 2).

    Returns:
        The cap in pixels, as the reference computes it: it may be fractional (``total / T *
        2``). ``smart_resize`` compares an integer area against it, so flooring it changes
        that test for no frame, only its ``sqrt(area / cap)`` scale by < 1e-5 relative.
    """
    counts = {"num_frames": num_frames, "min_pixels": min_pixels, "max_pixels": max_pixels, "factor": factor}
    for name, value in counts.items():
        if not _is_int(value) or value < 1:
            raise ValueError(f"effective_max_pixels: {name} must be an integer >= 1, got {value!r}.")
    if total_pixels is None:
        return float(max_pixels)
    if not _is_int(total_pixels) or total_pixels < 1:
        raise ValueError(f"effective_max_pixels: total_pixels must be an integer >= 1 or None, got {total_pixels!r}.")
    budget_cap = min(_REFERENCE_VIDEO_MAX_PIXELS, total_pixels / num_frames * factor)
    cap = max(budget_cap, int(min_pixels * _REFERENCE_MIN_PIXELS_MARGIN))
    return float(min(max_pixels, cap))
