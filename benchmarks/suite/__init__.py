"""The benchmark suite: ``suite.yaml`` entries run through the real CLI, tabulated and plotted (see ``runner``)."""
