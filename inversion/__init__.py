"""Real photo -> StyleGAN2 W+ latent (projection), optional pivotal tuning, on-disk latent cache.

    from inversion import project, ProjectionResult, InversionCancelled, LatentCache
    res = project(G, image_uint8_HxWx3, preset="fast", pti=False, progress=..., should_cancel=...,
                  cache=LatentCache(folder, max_bytes))

The perceptual loss is shift-tolerant LPIPS (:class:`inversion.lpips.STLPIPS`); its values are on
the ST-LPIPS scale.
"""

from ._common import InversionCancelled
from .cache import CacheEntry, LatentCache
from .encoder import LatentEncoder, load_encoder
from .project import PRESETS, ProjectionResult, ProjectionSettings, project
from .pti import pivotal_tuning
from .settings import ENCODER_PRESETS

__all__ = [
    "ENCODER_PRESETS",
    "PRESETS",
    "CacheEntry",
    "InversionCancelled",
    "LatentCache",
    "LatentEncoder",
    "ProjectionResult",
    "ProjectionSettings",
    "pivotal_tuning",
    "load_encoder",
    "project",
]
