"""bot: Bag of Tricks for image classification, end to end. This folder is the `bot` package once installed
(pyproject.toml maps the name onto it), so every module is imported as `bot.<package>.<module>`."""
