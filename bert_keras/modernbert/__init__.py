"""ModernBERT (Warner et al. 2024; Hugging Face `ModernBertModel`) in Keras 3, beside classic BERT.

- `attention`: rotary positions, global and sliding-window attention, packing-aware masks;
- `layers`: the pre-norm block (attention + GeGLU feed-forward);
- `encoder`: `ModernBertEncoder` (embeddings + norm, blocks, final norm);
- `heads`: the MLM head and the classification head, and the models around them;
- `weights`: Hugging Face safetensors checkpoints in both directions (the mapping table is there).

Constructor arguments use Hugging Face's `ModernBertConfig` names, so a checkpoint's
config.json maps one-to-one.
"""
