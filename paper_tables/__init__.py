"""One script per paper table; each is a thin story over uld.reporting (plan -> launch -> collect -> write)."""
