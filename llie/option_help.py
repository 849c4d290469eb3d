"""The help of the options several commands share (``llie enhance``, ``llie run``, ``python -m
deployments.serve``): one text per option, so that one word means one thing in each. No imports: --help
stays light."""

MODEL = "Model bundle folder, readable from every worker (default: the bundle shipped with llie)."
REFERENCE = "Folder or prefix of well-lit references with the same relative paths, for PSNR/SSIM."
DEVICE = "Torch device for the refiner: auto, cpu, cuda or cuda:N."
MAX_PIXELS = "Skip images larger than this many pixels (a decompression-bomb guard); each one is reported."
# Both begin alike: a photo at a time per worker process (llie run) or per thread (llie enhance).
WORKERS_LOCAL = "Photos enhanced at a time: the local cluster's worker processes (default: one per CPU core)."
WORKERS_THREADS = "Photos enhanced at a time, one thread each (default: one per CPU core)."
SHARD_SIZE = (
    "Images per task: the unit of parallelism, retry and resume (default: a resumed run's own; a new run "
    "gets about 4 shards per worker, 2 to 64 images each)."
)
RETRIES = "Extra attempts for a shard that fails, with exponential backoff."
DASK_ADDRESS = "Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (default: a local cluster)."
INPUT_URL = "Folder or object-store prefix (s3://bucket/prefix) of the photos to enhance; never written to."
OUTPUT_URL = "Folder or prefix for the enhanced photos (same relative paths) and _metrics/; not inside the input."
