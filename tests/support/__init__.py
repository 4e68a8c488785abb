"""Helpers the tests share (tests/conftest.py holds the fixtures and tiny_config): ROOT is the checkout."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
