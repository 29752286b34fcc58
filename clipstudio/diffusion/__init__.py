"""The CFG diffusion side of clipstudio (the ``[diffusion]`` extra; diffusers is imported lazily).

* :mod:`.sampling` - DDPM / DDIM / Euler / flow-matching maths as pure functions, CFG as a model wrapper.
* :mod:`.backend` - the unrolled CFG loop over a diffusers UNet + scheduler + text encoder; SD pipelines.
* :mod:`.shapes_model` - the embedded 32 px shapes-world text-to-image model, its loader and evaluation.
* :mod:`.spiral` - the 2-D spiral teaching demo.
* :mod:`.compare` - CLIP-guided optimizer vs CFG diffusion report.
"""
