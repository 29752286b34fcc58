"""clipstudio: CLIP-guided image generation, with a CFG diffusion backend beside it.

Notebook use::

    import clipstudio
    result = clipstudio.generate("a red circle on a blue background", steps=100, seed=0)
    result.image  # PIL image; result.losses, result.settings

    studio = clipstudio.Studio(clipstudio.make_config("a red circle on a blue background"))
    for _ in range(10):
        info = studio.step()
"""
__version__ = "0.1.0"

from .config import GenerateConfig  # noqa: E402
from .errors import ClipstudioError  # noqa: E402
from .studio import GenerateResult, StepInfo, Studio, generate, make_config  # noqa: E402

__all__ = ["ClipstudioError", "GenerateConfig", "GenerateResult", "StepInfo", "Studio", "generate", "make_config"]
