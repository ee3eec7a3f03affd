"""Prompt data sets (prompt files in the usual formats)."""

from segquant.data.prompts import FORMATS, PROMPT_COLUMNS, load_prompts

__all__ = ["FORMATS", "PROMPT_COLUMNS", "load_prompts"]
