"""A user's own multi-task problem for mtltrain: house prices (regression) and quick sales
(binary) from a CSV file, with a model, a loss and a metric of its own."""
