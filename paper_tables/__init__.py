"""One script per table: each declares its grid and shape (TABLE) and builds it with uld.tables."""
