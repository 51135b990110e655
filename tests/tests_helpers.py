from conftest import write_tiny_dataset


def other_dataset(root):
    """A dataset folder also called 'tiny' but with another item vocabulary."""
    return write_tiny_dataset(root, name="tiny", n_items=45, seed=7)
