"""Every seed range the project uses, in one place, so that no benchmark ever judges on seeds that a
training run or a learning loop has seen. Ranges are 1,000,000 wide unless noted."""

T2I_TRAIN = 0  # reference generator training scenes: [0, scenes)
AUTOENCODER_TRAIN = 40_000_000  # reference autoencoder training scenes (+ 1,000,000 per training seed)
DETECTOR_TRAIN = 1_000_000  # reference detector training scenes
DETECTOR_VAL = 2_000_000  # ... and its validation scenes
BENCH_BASE = 7_000_000  # `tally bench base`: generation seeds
TEST_FRESH = 8_500_000  # tests: scenes no training run renders
BENCH_DETECTOR = 9_000_000  # `tally bench detector`: fresh renders
BENCH_ENGINE = 11_000_000  # `tally bench engine`: job seeds (candidates derive from them)
BENCH_AUTOENCODER = 12_000_000  # `tally bench autoencoder`: fresh renders for round trips
LIBRARY_TRAIN = 20_000_000  # library learning: fresh seeds per iteration (+ 100,000 per seed stream)
LIBRARY_VALIDATION = 30_000_000  # library learning: held-out validation (+ 10,000 per seed stream)
LIBRARY_ADMISSION = 30_250_000  # library learning: the admission gate (+ 10,000 per seed stream)
LIBRARY_JUDGE = 30_500_000  # `tally bench optimize`: seeds neither learning nor validation used
