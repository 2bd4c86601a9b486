"""Built-in partitioners: ``raster`` (runs of cells in raster order) and ``tiles`` (rectangles)."""
