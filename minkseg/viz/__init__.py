"""Pictures: coloured scenes and run comparisons."""
