"""Run in the ms-swift 4.x tool environment: write a tiny random-weight Qwen2.5-VL model folder that
ms-swift loads with `--model DIR --model_type qwen2_5_vl` (nothing downloaded).

    python tiny_qwen.py REQUEST.json      (prints one JSON line: the folder and its file names)

REQUEST: {"out": dir, "texts": [training text for the tokenizer], "seed": int}

The tokenizer is a byte-level BPE trained with `tokenizers` on the given texts (the bench questions).
ms-swift's Qwen-VL template uses Qwen's fixed ids for the vision tokens (151655 for <|image_pad|>,
...), so the vocabulary is padded with unused tokens up to them; the output head is zero on every
token that is not printable text, so greedy answers are readable (and differ between prompts).
"""

import json
import sys
from pathlib import Path

QWEN_SPECIAL = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


# Qwen's ChatML form, written here (TRL and verl render prompts with the processor's template; ms-swift
# uses its own qwen2_5_vl template): system / user / assistant turns; an image is
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands to the image's tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{%- endif -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in part -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def tokenizer(texts):
    """A byte-level BPE trained on `texts`, with Qwen's special tokens at Qwen's ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    trained.train_from_iterator(texts, trainer)
    spec = json.loads(trained.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    size = max(QWEN_SPECIAL.values()) + 1
    by_id = {i: token for token, i in spec["model"]["vocab"].items()}
    by_id.update({i: token for token, i in QWEN_SPECIAL.items()})
    vocab = {by_id.get(i, f"<|unused_{i}|>"): i for i in range(size)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = trained.pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(QWEN_SPECIAL))
    readable = [
        i for i in spec["model"]["vocab"].values() if (text := tok.decode([i])) and text.isprintable()
    ]
    return tok, size, sorted(readable)


def main():
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = request["out"]
    tok, size, readable = tokenizer(request["texts"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(request.get("seed", 0))
    ids = QWEN_SPECIAL
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]},
            "tie_word_embeddings": False,
            "initializer_range": 0.5,  # large weights: answers depend strongly on the prompt
            **special,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **special,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        head = model.lm_head.weight
        keep = head[readable].clone()
        head.zero_()
        head[readable] = keep
    model.save_pretrained(out)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=fast,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    print(json.dumps({"model": out, "files": sorted(p.name for p in Path(out).iterdir())}))


if __name__ == "__main__":
    main()
