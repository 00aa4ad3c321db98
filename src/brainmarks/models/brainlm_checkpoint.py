"""The Brainmarks model ``brainlm_checkpoint``: any model brainlm opens (brainlm.plugins.brainmarks).

Brainmarks imports every module of its namespace package ``brainmarks.models``; this one ships
with brainlm. Usage::

    python -m brainmarks.main_logistic brainlm_checkpoint cls DATASET \\
        --overrides model_kwargs.checkpoint=PATH device=cpu amp=false
"""

from brainmarks.models.registry import register_model

from brainlm.plugins.brainmarks import create_brainmarks_model


@register_model
def brainlm_checkpoint(**kwargs):
    """A brainlm, original BrainLM or released ViT-MAE checkpoint (``model_kwargs.checkpoint``)."""
    return create_brainmarks_model(**kwargs)
