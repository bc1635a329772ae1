"""``python -m fused_losses.demo``: run the demo (see :mod:`fused_losses.demo.train`)."""

from .train import main

if __name__ == "__main__":
    main()
