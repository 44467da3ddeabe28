"""The embedding assets' partitions: one per leading hex digit of the image signature.

Signatures are content hashes, so the sixteen partitions are about equal in size and an
image never changes partition. A backfill of them fans out into sixteen runs that a
deployment places in separate containers (or pods), each holding the ``gpu`` pool while it
embeds; a query row (a pair's crop or context view) goes with its scene's signature.
"""

from stl_pipeline.features.queries import ImageItem

PARTITIONS: tuple[str, ...] = tuple("0123456789abcdef")


def partition_of(item: ImageItem) -> str:
    """The partition an item's vectors live in; signatures are validated lower-case hex."""
    return item.signature[0]


def in_partitions(items: list[ImageItem], partitions: list[str]) -> list[ImageItem]:
    wanted = set(partitions)
    return [item for item in items if partition_of(item) in wanted]
