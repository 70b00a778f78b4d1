"""llcv's version, in a module of its own so that any module can name it without importing the
package (which imports every module) and pyproject.toml can read it without importing torch."""

__version__ = "0.18.0"
