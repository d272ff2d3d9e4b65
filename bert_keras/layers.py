"""BERT's building blocks: packing-aware masks and positions, and one transformer block.

Why not keras-hub's `TransformerEncoder` + `PositionEmbedding` (checked in 0.32):
- its attention projects Q, K and V with three separate `EinsumDense` layers;
  one fused (hidden, 3*hidden) matmul is fewer, larger matmuls, which is what
  the bf16 CPU path (oneDNN) and GPUs run fastest;
- `PositionEmbedding` only slices positions `start_index..start_index+seq`; packed
  rows need positions that restart at every instance, so positions are gathered
  per token here;
- a hand-written block keeps the variables one-to-one with the Google / Hugging
  Face tensors (see `bert_keras.weights`), so import and export are plain copies.
Layers that fit as they are (`Embedding`, `LayerNormalization`) are Keras's own;
`Dense` is Keras's with one change (its bias add, see `Dense`), and dropout is
`FastDropout`. Training runs the element-wise stretches of a block through the
fused kernels of `bert_keras.fused`.

Packing (pipeline/contract/schema.py): `padding_mask` holds the 1-based instance index of
each token (0 = padding). Attention is allowed only between tokens with the same
non-zero index, and positions restart at 0 at each instance. An unpacked row
(1s then 0s) is the one-instance case, so there is a single code path.
"""

from __future__ import annotations

import contextlib
import contextvars

import keras
import tensorflow as tf

from bert_keras.fused import bias_gelu, dropout, dropout_add, dropout_add_norm, dropout_add_then_norm, normal_cdf
from bert_keras.fused import layer_norm as fused_layer_norm


def large_negative(dtype) -> float:
    """A finite "minus infinity" for additive masks: -inf would make padding rows NaN."""
    return -3.0e4 if tf.as_dtype(dtype) == tf.float16 else -1.0e9


def same_instance(padding_mask):
    """(batch, seq) instance ids -> (batch, seq, seq) bool: query i may attend key j."""
    m = tf.cast(padding_mask, tf.int32)
    return tf.logical_and(tf.equal(m[:, :, None], m[:, None, :]), tf.not_equal(m[:, None, :], 0))


def packed_positions(allowed):
    """Position of each token inside its own instance, (batch, seq) int32.

    Counts the earlier tokens of the same instance: the row sums of the strictly
    lower triangle of `allowed` (batch, seq, seq). That needs no contiguity
    assumption and reuses the attention mask; for an unpacked row it is 0..n-1.
    Padding tokens (which attend nowhere) get position 0.
    """
    seq = tf.shape(allowed)[1]
    lower = tf.linalg.band_part(tf.ones([seq, seq], tf.int32), -1, 0) - tf.eye(seq, dtype=tf.int32)
    return tf.reduce_sum(tf.cast(allowed, tf.int32) * lower[None], axis=-1)


def attention_bias(allowed, dtype):
    """(batch, seq, seq) bool -> additive bias (batch, 1, seq, seq) in `dtype`, broadcast over heads."""
    neg = tf.constant(large_negative(dtype), dtype)
    return tf.where(allowed[:, None], tf.zeros([], dtype), neg)


@keras.saving.register_keras_serializable(package="bert_keras")
def gelu(x):
    """Exact GELU in BERT's own form, 0.5 * x * (1 + erf(x / sqrt(2))) (google-research/bert).

    Written out because Keras' "gelu" (tf.nn.gelu) uses the erfc form, whose CPU
    kernel is not vectorized for bfloat16: forward + backward of the bias + GELU on a
    (4096, 1024) bf16 tensor took 21.5 ms with tf.nn.gelu and 11.0 ms with this
    (one process, same inputs; results agree to bf16 rounding).
    """
    return x * normal_cdf(x)  # the formula the fused training kernels use too


def _matmul_2d(x, kernel, dtype=None):
    """x @ kernel: (..., in) -> (..., out) as one 2-D matmul, in `dtype` (default x's), the result in x's dtype."""
    dtype = dtype or x.dtype
    flat = tf.matmul(tf.cast(tf.reshape(x, [-1, x.shape[-1]]), dtype), tf.cast(kernel, dtype))  # (rows, out)
    return tf.reshape(tf.cast(flat, x.dtype), tf.concat([tf.shape(x)[:-1], [kernel.shape[-1]]], axis=0))


def _matmul(dense, x):
    """x @ dense.kernel without the bias: (..., in) -> (..., out)."""
    return _matmul_2d(x, dense.kernel)


@keras.saving.register_keras_serializable(package="bert_keras")
class Dense(keras.layers.Dense):
    """keras `Dense` whose bias is added with a broadcast add, not `tf.nn.bias_add`.

    Keras' TensorFlow backend turns `x + bias` into `bias_add`, and TensorFlow's CPU
    gradient kernel for it (BiasAddGrad) sums bfloat16 rows in bfloat16: under
    mixed_bfloat16 a (4096, 768) bias gradient came out 21% off on average (4,096
    rows of 3.0 summed to 1,024), so every bias trained on a wrong gradient. The
    gradient of a broadcast add is a reduce_sum, which accumulates in float32
    (0.1% off, bfloat16 rounding of the result). Same variables and config as
    keras `Dense`; LoRA and quantized layers keep Keras' own call.
    """

    def call(self, inputs, training=None):
        if self.lora_enabled or self.quantization_mode:
            return super().call(inputs, training=training)
        served = _BF16_KERNELS.get()
        if served is not None and id(self) in served:
            x = _matmul_2d(inputs, served[id(self)], tf.bfloat16)  # float32 accumulation inside oneDNN
        else:
            x = keras.ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            x = tf.add(x, tf.cast(self.bias, x.dtype))  # AddV2; its gradient is Sum, not BiasAddGrad
        return self.activation(x) if self.activation is not None else x


# Serving in bf16 (`bert_keras.export`, precision "bfloat16"): id(Dense layer) -> a bfloat16 copy of its
# kernel, read while the export's signatures are traced (`bf16_matmuls`).
_BF16_KERNELS: contextvars.ContextVar[dict[int, tf.Variable] | None] = contextvars.ContextVar(
    "bert_keras_bf16_kernels", default=None)


@contextlib.contextmanager
def bf16_matmuls(kernels: dict[int, tf.Variable]):
    """Functions traced inside multiply each `Dense` whose id is in `kernels` by that bfloat16 kernel.

    Only the matmuls change: their input is cast to bfloat16 and their output back, while
    bias, activation, LayerNorm, softmax and the residual stream stay float32. That is what
    pays on CPUs with AMX (Intel Xeon): there a bf16 matmul from a stored bf16 kernel ran
    2.8-4.5x the float32 one at 800+ rows, while the mixed_bfloat16 policy (every layer in
    bf16) lost most of that to casting each fp32 kernel per call and to bf16 element-wise
    kernels (MiniLM-L6 serving on a 2-core Xeon at TensorFlow's default threads: 322 texts/s with the
    policy, 429-465 this way). Keras' policies
    have no "matmuls only" setting, hence this switch."""
    token = _BF16_KERNELS.set(dict(kernels))
    try:
        yield
    finally:
        _BF16_KERNELS.reset(token)


def _dense(units, initializer_range, name, activation=None):
    init = keras.initializers.TruncatedNormal(stddev=initializer_range)
    return Dense(units, activation=activation, kernel_initializer=init, name=name)


class FastDropout(keras.layers.Layer):
    """Inverted dropout in two XLA kernels (`fused.dropout`), with no seed variable.

    Written by hand because Keras' Dropout is five TensorFlow ops forward (a float
    per element from Philox, compare, scale, select) and, per call, updates a
    SeedGenerator variable that orders every dropout in the graph after the
    previous one. Here the mask is drawn inside the kernel from a seed made by a
    stateful op (`fused._keep`). Forward + backward of the attention-probability
    dropout on (32, 4, 128, 128) bf16, one process: 6.3 ms with Keras' Dropout,
    3.3 ms with this layer's earlier TensorFlow-ops form (16-bit Philox draws),
    1.6 ms now.
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, x, training=None):
        return dropout(x, self.rate) if training else x  # dropout returns x itself at rate 0

    def get_config(self):
        return super().get_config() | {"rate": self.rate}


class TransformerBlock(keras.layers.Layer):
    """One BERT layer. Post-LN (BERT's): x = LN(x + Attn(x)); x = LN(x + FFN(x)).
    Pre-LN (`normalize_first`): x = x + Attn(LN(x)); x = x + FFN(LN(x)), the LayerNorms
    keeping their post-LN names (attention_norm before the attention, output_norm before the FFN).

    The attention is written out (instead of keras `MultiHeadAttention`) for the
    fused QKV projection and an additive per-row mask computed once per batch and
    shared by all layers. GELU is the exact erf form (`gelu`), as in BERT and Hugging Face.
    `fused_kernels`: training runs the element-wise stretches as `bert_keras.fused` kernels;
    inference, and training with `fused_kernels=False`, run the same math as plain layers.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        initializer_range: float = 0.02,
        layer_norm_epsilon: float = 1e-12,
        normalize_first: bool = False,
        fused_kernels: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        self.fused_kernels = fused_kernels
        self.head_dim = hidden_size // num_heads

        # Variables, in the order of a Google / HF layer.
        self.qkv = _dense(3 * hidden_size, initializer_range, "qkv")  # columns: [query | key | value]
        self.attention_output = _dense(hidden_size, initializer_range, "attention_output")
        self.attention_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="attention_norm")
        self.intermediate = _dense(intermediate_size, initializer_range, "intermediate", activation=gelu)
        self.output_dense = _dense(hidden_size, initializer_range, "output")
        self.output_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="output_norm")
        self.attention_probs_dropout = FastDropout(attention_dropout)
        self.hidden_dropout = FastDropout(dropout)

    def build(self, input_shape=None):
        h = self.hidden_size
        self.qkv.build((None, h))
        self.attention_output.build((None, h))
        self.attention_norm.build((None, h))
        self.intermediate.build((None, h))
        self.output_dense.build((None, self.intermediate_size))
        self.output_norm.build((None, h))
        self.built = True

    def call(self, x, bias, training=None):
        """x: (batch, seq, hidden); bias: (batch, 1, seq, seq) additive mask -> (batch, seq, hidden)."""
        fused = self.fused_kernels and isinstance(training, bool) and training
        if self.normalize_first:
            return self._pre_ln(x, bias, fused, training)
        x = self._sublayer_end(self.attention_output, self.attention_norm, self._attention(x, bias, training), x,
                               fused, training)
        return self._sublayer_end(self.output_dense, self.output_norm, self._ffn_inner(x, fused), x, fused, training)

    def _pre_ln(self, x, bias, fused, training):
        """x + Attn(LN(x)), then + FFN(LN(.)). Fused: the attention's residual add and the FFN's
        LayerNorm are one kernel (`fused.dropout_add_then_norm`), as post-LN's add + norm are."""
        h = layer_norm(self.attention_norm, x, fused)  # (batch, seq, hidden)
        context = self._attention(h, bias, training)  # (batch, seq, hidden)
        if fused:
            x, h = dropout_add_then_norm(_matmul(self.attention_output, context), self.attention_output.bias, x,
                                         self.output_norm.gamma, self.output_norm.beta, rate=self.dropout,
                                         epsilon=self.output_norm.epsilon)
            return dropout_add(_matmul(self.output_dense, self._ffn_inner(h, fused)), self.output_dense.bias, x,
                               rate=self.dropout)
        x = x + self.hidden_dropout(self.attention_output(context), training=training)
        inner = self._ffn_inner(self.output_norm(x), fused)
        return x + self.hidden_dropout(self.output_dense(inner), training=training)

    def _attention(self, x, bias, training):
        """Multi-head self-attention before its output projection: (batch, seq, hidden) -> (batch, seq, hidden)."""
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        qkv = self.qkv(x)  # (batch, seq, 3*hidden)
        qkv = tf.reshape(qkv, [batch, seq, 3, self.num_heads, self.head_dim])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # (3, batch, heads, seq, head_dim): one transpose for all three
        # unstack, not qkv[0], qkv[1], qkv[2]: each slice's gradient is a StridedSliceGrad that
        # writes a zero-filled copy of the whole qkv tensor; unstack's is one stack (+21% step rate, bf16 CPU).
        q, k, v = tf.unstack(qkv, num=3, axis=0)
        q = q * tf.cast(self.head_dim**-0.5, q.dtype)  # scale the smaller tensor, not (seq, seq) scores
        scores = tf.matmul(q, k, transpose_b=True)  # (batch, heads, seq, seq)
        # A fused softmax + dropout kernel measured no faster here (A/B in one process), so both paths share this.
        probs = tf.nn.softmax(scores + tf.cast(bias, q.dtype), axis=-1)
        probs = self.attention_probs_dropout(probs, training=training)
        context = tf.matmul(probs, v)  # (batch, heads, seq, head_dim)
        return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch, seq, self.hidden_size])

    def _ffn_inner(self, x, fused):
        """gelu(x W1 + b1): (batch, seq, hidden) -> (batch, seq, intermediate)."""
        if fused:
            return bias_gelu(_matmul(self.intermediate, x), self.intermediate.bias)
        return self.intermediate(x)

    def _sublayer_end(self, dense, norm, h, residual, fused, training):
        """norm(residual + dropout(dense(h))): each post-LN sub-layer's output."""
        if fused:
            return dropout_add_norm(_matmul(dense, h), dense.bias, residual, norm.gamma, norm.beta,
                                    rate=self.dropout, epsilon=norm.epsilon)
        return norm(residual + self.hidden_dropout(dense(h), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
            normalize_first=self.normalize_first,
            fused_kernels=self.fused_kernels,
        )
        return config


def layer_norm(norm, x, fused: bool):
    """norm(x) for a keras LayerNormalization; fused: as one XLA kernel each way (`fused.layer_norm`)."""
    if fused:
        return fused_layer_norm(x, norm.gamma, norm.beta, epsilon=norm.epsilon)
    return norm(x)
