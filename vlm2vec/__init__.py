"""VLM2Vec: fine-tune a vision-language model into an embedding model (last-token pooling, InfoNCE, GradCache).

The public API: :class:`VLM2VecModel` (load, encode, save; it also loads TIGER-AI-Lab/VLM2Vec's released PEFT
adapter and full-weight folders), :func:`is_vlm2vec_checkpoint` (whether a directory holds something
:meth:`VLM2VecModel.from_pretrained` loads) and :data:`PROMPT_FORMATS` (``ours``, ``reference``).
"""

from vlm2vec.adapters import PROMPT_FORMATS
from vlm2vec.evaluate_hook import is_vlm2vec_checkpoint
from vlm2vec.model import VLM2VecModel

__all__ = ["PROMPT_FORMATS", "VLM2VecModel", "is_vlm2vec_checkpoint"]
