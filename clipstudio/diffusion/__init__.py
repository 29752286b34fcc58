"""The CFG diffusion side of clipstudio (the ``[diffusion]`` extra; diffusers is imported lazily).

* :mod:`.sampling` - DDPM / DDIM / Euler / flow-matching maths as pure functions, CFG as a model wrapper, and
  the one sampler registry (:data:`~.sampling.SAMPLERS`, :func:`~.sampling.list_samplers`).
* :mod:`.backend` - the unrolled CFG loop over a diffusers UNet + scheduler + text encoder; SD pipelines;
  worlds' embedded diffusion models, loaded by the loader their ``world.json`` names.
* :mod:`.config` - :class:`~.config.DiffuseConfig`, every setting of a ``diffuse`` run.

Worlds ship their own models (the shapes world's is ``clipstudio.worlds.shapes.diffusion_model``); the spiral
teaching demo is :mod:`clipstudio.demos.spiral`.
"""
