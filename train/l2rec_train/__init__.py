"""Trainer for L2Rec: the model of docs/MODEL.md, trained on MovieLens-100K.

Modules, bottom up: paths (asset cache), data (RecBole's sequential protocol),
tokenizer (llama.cpp's SPM tokenizer for the Gemma GGUF), backbone (Gemma 3
forward pass from the GGUF, with LoRA experts), prompts (view templates),
statecache (frozen lower-layer states), model (L2Rec), metrics, train, export.
"""
