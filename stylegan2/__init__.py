"""Our own StyleGAN2 generator in plain PyTorch; loads NVIDIA's checkpoints without running their code.

Public API (the server, benchmarks and users' scripts rely on it)::

    G = stylegan2.load_generator(path, device="cpu")     # eval, requires_grad_(False)
    ws = G.mapping(z, c=None, truncation_psi=1.0)        # [N, num_ws, w_dim]
    img = G.synthesis(ws, noise_mode="const")            # [N, 3, H, W], nominal [-1, 1]
    img, feats = G.synthesis(ws, return_features=True)   # feats[i]: output of block i
    feats = G.synthesis.features(ws, stop_block=5)       # blocks 0..5 only
"""

from .checkpoints import CheckpointError, load_generator, save_generator
from .networks import Generator, MappingNetwork, SynthesisNetwork
from .ops import set_fast_ops

__all__ = [
    "CheckpointError",
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "load_generator",
    "save_generator",
    "set_fast_ops",
]
