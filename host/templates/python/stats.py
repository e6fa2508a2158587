"""The plugin's own logic, free of gantry imports so that plain Python tests it."""


def count(text: str) -> tuple[int, int]:
    """Lines and words of `text`."""
    return len(text.splitlines()), len(text.split())
