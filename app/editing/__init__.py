"""The editing core: pure torch + transformers, no web or database imports, no environment.

lm = load_model()                                      # SmolLM2 by default, or any HF causal LM folder
editor = build_editor(lm, settings, Role.EVAL)         # C₀ per edited layer, cached on disk
result = editor.apply([EditRequest(...)], batch_id=1)
"""
