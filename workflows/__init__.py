"""Workflows: data loading, training, index rebuilds and promotion as functions of config dataclasses.

The CLI (`recsys`) parses flags and config files into these configs and prints results;
everything in between happens here, so benches and tests drive the same code without argparse.
"""
