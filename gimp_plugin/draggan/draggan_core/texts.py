"""Progress texts, result-layer names, and the inversion-quality verdict."""

from __future__ import annotations

from typing import Any

# A reconstruction is "poor" (the photo is far from the model's domain) when either holds. The
# limits are per model: the backend sends them with each model (calibrated for the default model,
# backend/models.py); these are the fallback for a backend that sends none.
# ST-LPIPS (VGG scale) of a good GAN inversion is around 0.1-0.25; PSNR around 20-30 dB.
POOR_STLPIPS = 0.35
POOR_PSNR_DB = 16.0

LAYER_SUFFIX = "DragGAN"
POOR_SUFFIX = "poor inversion: try PTI or another model"
SHORT_SUFFIX = "stopped short"
# A drag that covered less than this share of the handles' way "stopped short" (the fidelity
# benchmarks' "stalled": on the built-in model a small selection around one point can hold a drag
# back entirely, README's mask-strength table); the user is told what may free it.
SHORT_SHARE = 0.2
# The backend's worst local colour difference (CIE76 delta E over a few pixels) from which the status
# line says that the reconstruction changed a colour a person will see (an eye, the hair): on the
# built-in model's procedural renders the inversion without PTI read 21-45 (eyes turned blue), with it
# about half that.
COLOUR_NOTICE = 20.0


def model_limits(model: Any) -> tuple[float, float]:
    """(ST-LPIPS above which, PSNR dB below which) an inversion with `model` is poor: the model's
    own limits from the backend when it sent them, else the defaults."""
    stlpips = getattr(model, "poor_stlpips", None)
    psnr = getattr(model, "poor_psnr_db", None)
    return (float(stlpips) if stlpips else POOR_STLPIPS, float(psnr) if psnr else POOR_PSNR_DB)


def is_poor(psnr: float | None, stlpips: float | None, limits: tuple[float, float] | None = None) -> bool:
    max_stlpips, min_psnr = limits or (POOR_STLPIPS, POOR_PSNR_DB)
    if stlpips is not None and stlpips > max_stlpips:
        return True
    return psnr is not None and psnr < min_psnr


def quality_text(psnr: float, stlpips: float, limits: tuple[float, float] | None = None, colour: float = 0.0) -> str:
    verdict = "poor — the photo is far from what the model can draw; try PTI or another model" \
        if is_poor(psnr, stlpips, limits) else "good"
    text = f"reconstruction {verdict} (PSNR {psnr:.1f} dB, ST-LPIPS {stlpips:.3f})"
    if colour >= COLOUR_NOTICE:
        text += (f", but it changed a colour somewhere (delta E {colour:.0f}; e.g. an eye or the hair): "
                 "PTI keeps the picture's own colours")
    return text


def share_of_the_way(handles: Any, targets: Any, final: Any) -> float | None:
    """Share of the handles' way to their targets the drag covered: 1 - sum |final - target| / sum
    |handle - target| over the pairs (points (x, y) in pixels of one frame; 1 = all there, 0 = none
    of the way, negative = further away). None when the handles started within 1 px in all."""
    def distance(a: Any, b: Any) -> float:
        return float(((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5)

    start = sum(distance(h, t) for h, t in zip(handles, targets))
    if start <= 1.0 or len(final) != len(targets):
        return None
    return 1.0 - sum(distance(f, t) for f, t in zip(final, targets)) / start


def stopped_short_text(share: float, masked: bool, landed: list[bool] | None = None) -> str:
    """The status line's advice for a drag that stopped short: ``landed`` (the backend's verdict per
    handle) names the handles that did not arrive, else ``share`` says how much of the way it covered."""
    hint = ("a larger selection, a lower Mask strength or no selection may free it" if masked
            else "more steps, Region: Whole picture, or handles on features the model draws, may help")
    if landed:
        missed = [str(i + 1) for i, ok in enumerate(landed) if not ok]
        which = "handle " + ", ".join(missed) if len(missed) < len(landed) else "every handle"
        return f"the drag stopped short ({which} did not reach its target): {hint}"
    return f"the drag stopped short ({max(share, 0.0):.0%} of the way): {hint}"


def result_layer_name(source_name: str, continued: bool, poor: bool, short: bool = False) -> str:
    """e.g. 'Photo (DragGAN)', 'Photo (DragGAN, continued)', 'Photo (DragGAN — poor inversion: ...)',
    'Photo (DragGAN — stopped short)'."""
    tag = LAYER_SUFFIX + (", continued" if continued else "")
    base = source_name
    # dragging a result layer again: keep one tag, not 'x (DragGAN) (DragGAN)'
    cut = base.find(f" ({LAYER_SUFFIX}")
    if cut > 0:
        base = base[:cut]
    notes = [text for text, on in ((POOR_SUFFIX, poor), (SHORT_SUFFIX, short)) if on]
    if notes:
        return f"{base} ({tag} — {'; '.join(notes)})"
    return f"{base} ({tag})"


PHASE_WORDS = {
    "queued": "waiting in the backend's queue",
    "loading": "loading the model",
    "inversion": "fitting the photo to the model (inversion)",
    "drag": "dragging",
}


def progress_text(message: Any, mode_text: str, limits: tuple[float, float] | None = None) -> str:
    """One status-bar line for a protocol Progress message (phase, step/total, position, quality)."""
    phase = PHASE_WORDS.get(message.phase, message.phase)
    parts = [f"DragGAN: {phase}"]
    if message.phase == "queued" and message.position:
        parts.append(f"position {message.position}")
    elif message.total:
        parts.append(f"step {message.step}/{message.total}")
    if message.inversion is not None:
        parts.append(quality_text(message.inversion.psnr, message.inversion.stlpips, limits,
                                  float(getattr(message.inversion, "colour", 0.0) or 0.0)))
    note = getattr(message, "text", "")
    if note and ("face" in note or "align" in note):   # the backend's alignment notes (protocol 3)
        parts.append(note)
    parts.append(mode_text)
    return " — ".join(parts)


# share of the progress bar for each phase: (start, end); inversion then drag
PHASE_SPANS_NEW = {"queued": (0.0, 0.02), "loading": (0.02, 0.05), "inversion": (0.05, 0.5), "drag": (0.5, 0.95)}
PHASE_SPANS_CONTINUE = {"queued": (0.0, 0.02), "loading": (0.02, 0.05), "inversion": (0.05, 0.05),
                        "drag": (0.05, 0.95)}


def progress_fraction(message: Any, continued: bool) -> float:
    spans = PHASE_SPANS_CONTINUE if continued else PHASE_SPANS_NEW
    start, end = spans.get(message.phase, (0.0, 0.95))
    if message.total:
        return start + (end - start) * min(1.0, message.step / message.total)
    return start
