"""Tiny models built from configs (no downloads), shared by the embed and pipeline tests."""

import json
from pathlib import Path

TINY_ROBERTA_WINDOW = 64  # 66 positions - RoBERTa's padding offset of 2


def build_tiny_roberta(folder: Path) -> Path:
    """2-layer RoBERTa with a byte-level tokenizer (256 bytes + 5 specials, no merges)."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    RobertaTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=TINY_ROBERTA_WINDOW + 2, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    return folder


def build_tiny_wav2vec2(folder: Path) -> Path:
    """2-layer Wav2Vec2 with its feature extractor (16 kHz, normalised input)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                            conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2, vocab_size=10)
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=False).save_pretrained(folder)
    return folder
