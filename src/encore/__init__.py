"""Encore: music recommendation, genre classification and composition on Ray."""

__version__ = "0.1.0"
