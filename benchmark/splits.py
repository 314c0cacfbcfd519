"""The names of a dataset's splits, shared by the datasets, the runner and the results.

"train" is what the method trains on; "val" is the holdout of the same environment
(DomainBed's "out" split) when the holdout fraction is positive; "test" is a separate
evaluation split where a protocol defines one (the linear unit tests shuffle the spurious
block there). Kept free of torch: the results read these names without the training stack.
"""

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)  # the order in which tables and records list them
