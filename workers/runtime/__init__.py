"""What runs inside ``tally worker`` and nowhere else: the process (``process``), the job runner that holds
its models (``runner``), the functions RQ calls (``tasks``), cross-job batches (``batching``) and library
learning slices (``slices``). The API never imports this package; it shares the data layer above it
(``workers.records``, ``workers.queue``, ...) with the worker."""
