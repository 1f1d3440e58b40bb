"""Tiny random models built from a config in milliseconds (no download), for every test folder."""

from __future__ import annotations

import torch

# Sentences the tiny tokenizers are trained on; they cover the words the unit tests use.
TRAINING_TEXT = [
    "The mother tongue of Danielle Darrieux is French. Danielle Darrieux was born in France.",
    "Paris is the capital of France. The Eiffel Tower is in Paris. Rome is in Italy.",
    "Apple was founded by Steve Jobs. Toyota is a company from Japan. English and German are languages.",
    "Therefore the answer is yes. Because it rained, I stayed home. You can see the river.",
    "Michael Jordan plays basketball. Lionel Messi plays soccer. The Beatles played music in London.",
]


def train_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained in milliseconds on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


# The tiny Llama's shape; a test that needs another size overrides some of it (random_llama).
TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
)


def random_llama(tok, **shape):
    """A random Llama (float32, eval mode) on `tok`'s vocabulary, tied embeddings; `shape` overrides
    TINY_LLAMA. Seed torch first for the same weights every time."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{**TINY_LLAMA, **shape},
        vocab_size=len(tok),
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).float().eval()


def build_tiny_model(arch: str = "llama", seed: int = 0, n_layer: int = 6):
    """A small random Llama or GPT-2 (float32, eval mode) and its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = train_tiny_tokenizer()
    torch.manual_seed(seed)
    if arch == "llama":
        return random_llama(tok, num_hidden_layers=n_layer), tok
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tok),
            n_embd=64,
            n_inner=128,
            n_layer=n_layer,
            n_head=4,
            n_positions=256,
            initializer_range=0.2,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    return model.float().eval(), tok
