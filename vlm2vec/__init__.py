"""VLM2Vec: fine-tune a vision-language model into an embedding model (last-token pooling, InfoNCE, GradCache).

The public API: :class:`VLM2VecModel` (load, encode, save) and :func:`is_vlm2vec_checkpoint` (whether a
directory holds something :meth:`VLM2VecModel.from_pretrained` loads).
"""

from vlm2vec.evaluate_hook import is_vlm2vec_checkpoint
from vlm2vec.model import VLM2VecModel

__all__ = ["VLM2VecModel", "is_vlm2vec_checkpoint"]
