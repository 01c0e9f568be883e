"""AMNet: temporal action localization with an Action-aware Masking Network and Group-based Attention."""

__version__ = "0.1.0"
