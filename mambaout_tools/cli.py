"""Argument types the command-line tools share."""
import argparse


def int_at_least(minimum: int):
    """An argparse ``type`` accepting integers >= ``minimum``, with a message naming the bad value."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {text}')
        return value
    return parse
