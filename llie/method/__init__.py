"""The method: features, stage-2 quantiles, histogram mapping, the refiner, and the pipeline that runs them from a bundle."""
