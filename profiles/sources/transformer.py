"""The Transformer of Vaswani et al. (2017), "Attention Is All You Need", base and big.

Encoder-decoder, 6 + 6 layers, post-norm, a 37,000-token shared source/target BPE vocabulary
(WMT 2014 English-German) whose embedding is also the pre-softmax projection (section 3.4).
Base: d_model 512, d_ff 2048, 8 heads (65 M parameters in the paper's Table 3).
Big: d_model 1024, d_ff 4096, 16 heads (213 M).
"""

from torch import nn

VOCAB_SIZE = 37000


class Transformer(nn.Module):
    """Shared embedding -> nn.Transformer -> projection tied to the embedding."""

    def __init__(self, d_model: int, d_ff: int, heads: int, layers: int = 6, vocab_size: int = VOCAB_SIZE) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.transformer = nn.Transformer(
            d_model=d_model, nhead=heads, num_encoder_layers=layers, num_decoder_layers=layers,
            dim_feedforward=d_ff, dropout=0.1, batch_first=True,
        )
        self.generator = nn.Linear(d_model, vocab_size, bias=False)
        self.generator.weight = self.embedding.weight

    def forward(self, source, target):
        hidden = self.transformer(self.embedding(source), self.embedding(target))
        return self.generator(hidden)


def transformer_base() -> Transformer:
    """Transformer-base: N=6, d_model=512, d_ff=2048, h=8."""
    return Transformer(d_model=512, d_ff=2048, heads=8)


def transformer_big() -> Transformer:
    """Transformer-big: N=6, d_model=1024, d_ff=4096, h=16."""
    return Transformer(d_model=1024, d_ff=4096, heads=16)
