# popbox.store._measure (C): the batch of popbox.store.maildir_measure._python_sizes.
def sizes(
    dir_fd: int, names: list[str], buffer_size: int, /
) -> list[tuple[int, int] | None]: ...
