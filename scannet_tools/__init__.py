"""ScanNet v2 tooling: raw-scene reader, label mapping, prepare, ground-truth export,
splits, and a synthetic scene generator that writes the exact raw ScanNet layout."""
