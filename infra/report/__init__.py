"""Reports of a plan for people: the cost report and the diff of two plans/renders (pull requests)."""
