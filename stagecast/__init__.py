"""Stagecast."""
