"""The side-by-side benchmark (issue 5): pure configuration and report functions, a runner."""
