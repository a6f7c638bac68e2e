"""A progress bar on stderr while the benchmark compiles and times."""

from tqdm import tqdm


def progress(total: int, description: str) -> tqdm:
    """A tqdm bar over ``total`` steps, on stderr, erased when done (the tables follow).

    Args:
      total: the number of ``update()`` calls expected.
      description: what is being timed.

    Returns:
      The bar, a context manager.
    """
    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)
