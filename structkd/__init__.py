"""structkd: structure-level knowledge distillation for multilingual sequence labeling.

``structkd.errors`` is the base every layer imports; ``structkd.cli`` is the app above ``stages/``.
"""
