"""Samplers for the JEM family (JEM, JEM++, EB-JDAT) and for generating from any run: SGLD and PYLD
(``langevin``), the registered kinds (``kinds``), replay buffers, class Gaussians, a method's
:class:`ContrastiveSampler` and reference settings (``sampler``), and sampling from a trained run
(``generate``). They work on the references' symmetric [-1, 1] scale (``to_sym`` / ``from_sym``),
so step sizes, clamps and ``eps`` are the references' numbers; models are called on [0, 1] images.
"""

from bench.sampling.buffer import ReplayBuffer, fresh_starts
from bench.sampling.gaussians import ClassGaussians
from bench.sampling.generate import GENERIC_SAMPLER, SampleFn, make_sample_fn, run_sampler_config
from bench.sampling.images import save_grid, save_npz, to_uint8_nhwc
from bench.sampling.kinds import SAMPLERS, SamplerKind, register_sampler
from bench.sampling.langevin import first_layer_is_affine, from_sym, model_mode, pyld, sgld, to_sym
from bench.sampling.sampler import ContrastiveSampler, SamplerConfig, reference_sampler, run_sampler

__all__ = [
    "ClassGaussians",
    "ContrastiveSampler",
    "GENERIC_SAMPLER",
    "ReplayBuffer",
    "SAMPLERS",
    "SampleFn",
    "SamplerConfig",
    "SamplerKind",
    "first_layer_is_affine",
    "fresh_starts",
    "from_sym",
    "make_sample_fn",
    "model_mode",
    "pyld",
    "reference_sampler",
    "register_sampler",
    "run_sampler",
    "run_sampler_config",
    "save_grid",
    "save_npz",
    "sgld",
    "to_sym",
    "to_uint8_nhwc",
]
