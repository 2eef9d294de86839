"""``python -m hirm.world ARGS`` is ``hirm world build ARGS`` (as ``python -m hirm.world.build``)."""

from .build import main

if __name__ == "__main__":
    main()
