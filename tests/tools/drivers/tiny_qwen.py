"""Run in a tool environment: build a tiny random-weight Qwen2.5-VL folder, with nothing downloaded.

    python tiny_qwen.py REQUEST.json      (prints one JSON line: the folder and its sizes)

REQUEST: {"out": folder, "texts": [training texts for the tokenizer], "seed": int}

The tokenizer is a byte-level BPE trained with `tokenizers` on `texts` (the bench questions), with
the special tokens Qwen2.5-VL's processor and ms-swift's template use; the chat template is written
here in Qwen's ChatML form (system, user, assistant turns; an image is
<|vision_start|><|image_pad|><|vision_end|>). The model is built from a config with transformers:
one vision block, one text layer, 64 hidden units, so it answers on a CPU in well under a second.
"""

import json
import sys
from pathlib import Path

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

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


# Qwen2.5-VL's own ids of its special tokens: ms-swift's Qwen-VL template hard-codes the image and video
# pads (151655, 151656) and the end tokens, so the tiny vocabulary keeps them where Qwen has them.
QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
VOCAB_SIZE = 151665


def tokenizer(texts, out):
    """A byte-level BPE tokenizer trained on `texts`, its special tokens at Qwen's ids, saved as a
    Qwen2 fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trained.train_from_iterator(texts, trainer)
    state = json.loads(trained.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    core = Tokenizer(models.BPE(vocab={**state["vocab"], **QWEN_IDS}, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )
    assert all(fast.convert_tokens_to_ids(token) == i for token, i in QWEN_IDS.items())
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "Qwen2TokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return fast


def model(fast, out, seed):
    """A one-layer Qwen2.5-VL with random weights, its processor and generation config."""
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = {token: fast.convert_tokens_to_ids(token) for token in SPECIALS}
    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[0],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **text,
    )
    torch.manual_seed(seed)
    network = Qwen2_5_VLForConditionalGeneration(config).eval()
    network.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    network.save_pretrained(out, safe_serialization=True)
    images = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=256 * 28 * 28)
    processor = Qwen2_5_VLProcessor(
        image_processor=images,
        tokenizer=AutoTokenizer.from_pretrained(out),
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return sum(p.numel() for p in network.parameters())


def main():
    request = json.loads(Path(sys.argv[1]).read_text())
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    fast = tokenizer(request["texts"], out)
    parameters = model(fast, out, int(request.get("seed", 0)))
    print(json.dumps({"folder": str(out), "trained_tokens": len(fast.get_vocab()), "parameters": parameters}))


if __name__ == "__main__":
    main()
