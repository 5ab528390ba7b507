"""Models of the resilience app arrive with its issue."""
