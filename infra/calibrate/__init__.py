"""`gpufleet calibrate`: fit the capacity model's efficiency scales of a GPU to bench results."""
