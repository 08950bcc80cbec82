"""``python -m anomaly_zoo ...`` = the ``anomaly-zoo`` command (e.g. where the console script is not on PATH)."""

from anomaly_zoo.launcher import main

if __name__ == "__main__":
    main()
