"""The editing core: pure torch + transformers, no web or database imports.

    lm = load_model()                      # SmolLM2 by default, or any HF causal LM folder
    stats = load_key_stats(lm, settings)   # C₀ per edited layer, cached on disk
    editor = Editor(lm, settings, stats)
    result = editor.apply([EditRequest(...)], batch_id=1)
"""
