"""The data side: where images come from (a local folder or an ``s3://`` bucket), the split and
the cross-validation folds (copies of one photo kept together), decoding and the transforms, and
the loaders a worker reads."""
