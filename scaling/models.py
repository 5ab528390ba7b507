"""Models of the scaling app arrive with its issue."""
