"""The model owner: one process that loads the models placed on it (GPU models) and
batches the requests of every frontend process for them (see ``service``)."""
