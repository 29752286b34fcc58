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

    # A zoom video, with a callback after each frame (return False to stop):
    clipstudio.animate("a red circle", clip=["shapes-guide"], size=(64, 64), output="zoom.mp4",
                       animation={"frames": 24, "zoom": "0: 1 | 12: 1.05"}, callback=lambda s, i, img: print(i))
"""
from ._version import __version__
from .api import animate, generate, make_config
from .config import GenerateConfig
from .keyframes import AnimateConfig
from .errors import ClipstudioError
from .studio import GenerateResult, StepInfo, Studio

__all__ = ["__version__", "AnimateConfig", "ClipstudioError", "GenerateConfig", "GenerateResult", "StepInfo", "Studio",
           "animate", "generate", "make_config"]
