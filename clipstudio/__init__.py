"""clipstudio: CLIP-guided image generation, with a CFG diffusion backend beside it.

Notebook use::

    import clipstudio
    from clipstudio.recipes import recipe_config

    config = recipe_config("shapes", "a red circle on a blue background", seed=0)  # offline shapes world
    result = clipstudio.generate(**config.to_dict())
    result.image  # PIL image; result.losses, result.settings

    studio = clipstudio.Studio(config)
    for _ in range(10):
        info = studio.step()
"""
from ._version import __version__
from .api import generate, make_config
from .config import GenerateConfig
from .errors import ClipstudioError
from .studio import GenerateResult, StepInfo, Studio

__all__ = ["__version__", "ClipstudioError", "GenerateConfig", "GenerateResult", "StepInfo", "Studio", "generate", "make_config"]
