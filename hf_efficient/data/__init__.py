"""Data shipped with the package (check_text.txt) and the image processor of the image variants."""
