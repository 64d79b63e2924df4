"""The separator families a blend may hold (every family but the blend itself): the one place their names map to
their classes. ``studio.separation.SEPARATORS`` adds the blend."""

from __future__ import annotations

from studio.separation.base import Separator
from studio.separation.bsrnn import BandSplitRNN
from studio.separation.hdemucs import HDemucsSeparator

#: Separator families that are not blends, by name.
MEMBERS: dict[str, type[Separator]] = {"bsrnn": BandSplitRNN, "hdemucs": HDemucsSeparator}


def member_class(class_name: str | None) -> type[Separator]:
    """The class of a blend member saved as ``_class_name``.

    Raises:
        ValueError: for a class that is not a member family (a blend of blends is not supported).
    """
    by_class = {cls.__name__: cls for cls in MEMBERS.values()}
    if class_name not in by_class:
        raise ValueError(f"{class_name!r} cannot be a blend member; members are one of {sorted(by_class)}")
    return by_class[class_name]
