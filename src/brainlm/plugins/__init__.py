"""Plugins that let other tools use brainlm models (top floor: they may import anything)."""
